"""The local update: global weights + client data + instructions + the client's own state
-> new weights, metrics and the client's new state.

Nothing here knows about rounds, workers or engines. A backend (the local thread pool, a
Flower ClientApp) owns a model object, hands it in with the global weights and the client's
stored state, gets a :class:`~fedcifar.messages.ClientResult` back and stores its ``state``
where the client lives. The model is reused between clients: it is reloaded from the global
weights, never deep-copied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedcifar.client.adversary import MODEL_ATTACKS, fail_after, fail_before, flip_labels, poison
from fedcifar.client.hooks import LocalHooks, next_state, overlay_weights
from fedcifar.client.losses import FeatureTap, Objective
from fedcifar.data.augment import Normalize, random_crop_flip
from fedcifar.federation import NUM_CLASSES
from fedcifar.messages import (
    CONTROL,
    DP_LEDGER,
    DYN_GRAD,
    LOCAL,
    ClientInstructions,
    ClientResult,
    ClientState,
    Weights,
)
from fedcifar.model.spec import batchnorm_keys
from fedcifar.privacy.dpsgd import (
    PrivateGradients,
    RecordPlan,
    ledger_entry,
    ledger_rows,
    poisson_batches,
    spend_check,
)
from fedcifar.privacy.mechanism import privatize_update
from fedcifar.privacy.noise import noise_source, secure_rng
from fedcifar.runtime import Runtime


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind a ``torch.compile`` wrapper (which shares its parameters)."""
    return getattr(model, "_orig_mod", model)


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy ``weights`` into ``model`` in place (dtype, device and strides of the model kept)."""
    unwrap(model).load_state_dict(weights, strict=True)


def read_weights(model: nn.Module) -> Weights:
    """A detached copy of the model's full state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def minibatches(
    n: int, batch_size: int, epochs: int, steps: int, generator: torch.Generator
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (epoch, index tensor) for each minibatch of shuffled epochs."""
    done = 0
    epoch = 0
    while True:
        order = torch.randperm(n, generator=generator, device=generator.device)
        for start in range(0, n, batch_size):
            yield epoch, order[start : start + batch_size]
            done += 1
            if steps and done >= steps:
                return
        epoch += 1
        if not steps and epoch >= epochs:
            return


def local_images(n: int, batch_size: int, epochs: int, steps: int) -> int:
    """Images one update trains on: what :func:`minibatches` yields, without drawing it."""
    if not steps:
        return epochs * n
    per_epoch = -(-n // batch_size)
    full, rest = divmod(steps, per_epoch)
    return full * n + min(rest * batch_size, n)


def make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float, runtime: Runtime
) -> torch.optim.Optimizer:
    """The client's (or the centralized reference's) optimizer, new for each update."""
    fused = runtime.fused_optimizer
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown client optimizer {name!r}")


@dataclass(frozen=True)
class FitStats:
    loss: float  # mean over the last epoch's batches (over every batch when steps are fixed)
    acc: float
    steps: int
    images: int


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batches: Iterable[tuple[int, torch.Tensor]],
    generator: torch.Generator,
    runtime: Runtime,
    *,
    augment: bool = True,
    hooks: LocalHooks | None = None,
    lr: float = 0.0,
    last_epoch_only: bool = True,
    objective: Objective | None = None,
    private: PrivateGradients | None = None,
    grad_clip: float = 0.0,
) -> FitStats:
    """Minibatch training of ``model`` on device-resident uint8 ``images``: the one training step.

    The local update and the centralized reference both train through here, so they differ
    only in their data, their schedule, their objective (plain cross-entropy by default) and
    where the optimizer comes from. With ``private`` (record-level DP) the gradients are its
    clipped and noised per-sample ones instead of the batch's backward pass. ``grad_clip`` > 0
    clips the step's whole gradient, hook terms included, to that L2 norm.
    """
    device = runtime.device
    normalize = Normalize(device)
    objective = objective or Objective()
    tap = FeatureTap(unwrap(model)) if objective.needs_features else None
    model.train()
    last_epoch = -1
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = steps = trained = 0
    for epoch, idx in batches:
        if epoch != last_epoch and last_epoch_only:
            loss_sum.zero_(), correct.zero_()
            seen, last_epoch = 0, epoch
        x = images[idx]
        if augment:
            x = random_crop_flip(x, generator)
        x = normalize(x, runtime.memory_format)
        y = labels[idx]
        optimizer.zero_grad(set_to_none=True)
        if private is not None:
            loss, logits = private(x, y)
        else:
            with runtime.autocast():
                logits = model(x)
                loss = objective(logits, y, tap.features if tap is not None else None)
            loss.backward()
        if hooks is not None:
            hooks.after_backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(unwrap(model).parameters(), grad_clip, foreach=True)
        optimizer.step()
        if hooks is not None:
            hooks.after_step(lr)
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        trained += len(y)
        steps += 1
    if tap is not None:
        tap.close()
    return FitStats(float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1), steps, trained)


def train_client(
    model: nn.Module,
    global_weights: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    instructions: ClientInstructions,
    runtime: Runtime,
    client_id: int = -1,
    state: ClientState | None = None,
    cancel: threading.Event | None = None,
) -> ClientResult:
    """Train ``model`` from ``global_weights`` on one client's uint8 images, as ``instructions`` say.

    ``state`` is what the client kept from the last round it trained (None or empty: nothing
    yet); the result's ``state`` replaces it. Train loss and accuracy are averaged over the
    last local epoch (over every step when ``steps`` is set), measured on the augmented
    batches as they are trained. An injected fault or an attack in the instructions is carried
    out here (``cancel`` releases a hang).
    """
    fail_before(instructions.fault, cancel)
    if instructions.attack == "label_flip":
        labels = flip_labels(labels, NUM_CLASSES)
    start = time.perf_counter()
    device = runtime.device
    load_weights(model, global_weights)
    setup = time.perf_counter() - start  # the weight broadcast, reported as round overhead
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    generator = torch.Generator(device=device).manual_seed(instructions.seed)
    state = state or {}
    if instructions.local_bn and LOCAL in state:
        overlay_weights(model, state[LOCAL])
    optimizer = make_optimizer(
        model, instructions.optimizer, instructions.lr, instructions.momentum, instructions.weight_decay, runtime
    )
    hooks = LocalHooks(
        unwrap(model),
        instructions.proximal_mu,
        instructions.control_server,
        state.get(CONTROL),
        instructions.feddyn_alpha,
        state.get(DYN_GRAD),
        local=batchnorm_keys(global_weights) if instructions.local_bn else (),
    )
    n = len(labels)
    objective = Objective(
        instructions.fedlc_tau,
        torch.bincount(labels, minlength=unwrap(model).fc.out_features) if instructions.fedlc_tau > 0 else None,
        instructions.feddecorr_beta,
    )
    private, dp_report = None, {}
    if instructions.dp_sample_clip > 0:  # record-level DP-SGD: Poisson batches, per-sample clip and noise
        rows = ledger_rows(state.get(DP_LEDGER))
        plan = RecordPlan.of(n, instructions)
        dp_report["dp_epsilon"] = spend_check(rows, plan, instructions.dp_delta, instructions.dp_budget)
        stream = secure_rng(instructions.dp_seed, instructions.seed)
        batches = poisson_batches(n, plan.rate, plan.steps, plan.per_epoch, stream, device)
        normal = noise_source(instructions.dp_seed, instructions.seed, 0x5D)
        private = PrivateGradients(
            unwrap(model), instructions.dp_sample_clip, plan.noise_multiplier, instructions.batch_size, normal, runtime
        )
    else:
        batches = minibatches(n, instructions.batch_size, instructions.epochs, instructions.steps, generator)
    stats = fit(
        model,
        optimizer,
        images,
        labels,
        batches,
        generator,
        runtime,
        augment=instructions.augment,
        hooks=hooks,
        lr=instructions.lr,
        last_epoch_only=not instructions.steps,
        objective=objective,
        private=private,
        grad_clip=instructions.grad_clip,
    )
    t_read = time.perf_counter()
    weights = read_weights(model)
    # The client keeps its honest state; only what it sends is poisoned or corrupted.
    new_state, extras = next_state(state, hooks, weights, instructions.local_bn, stats.steps, instructions.lr)
    if private is not None:
        new_state[DP_LEDGER] = ledger_entry([*rows, plan.row()])
    if instructions.dp_clip > 0:  # the honest client's clip (and noise); an attacker's poison comes after
        weights, dp_report["dp_below_clip"] = privatize_update(global_weights, weights, instructions)
    if instructions.attack in MODEL_ATTACKS:
        weights = poison(global_weights, weights, instructions.attack, instructions.attack_scale, generator)
    weights = fail_after(instructions.fault, weights)
    setup += time.perf_counter() - t_read
    metrics = {
        "train_loss": stats.loss,
        "train_acc": stats.acc,
        "steps": float(stats.steps),
        "images": float(stats.images),
        "seconds": time.perf_counter() - start,
        "setup_seconds": setup,
        **dp_report,
    }
    return ClientResult(client_id, weights, n, metrics, new_state, extras)
