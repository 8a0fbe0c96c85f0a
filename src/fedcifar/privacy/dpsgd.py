"""Record-level DP-SGD inside one client (Abadi et al. 2016, "Deep Learning with Differential
Privacy"): ``dp=record``, the cross-silo reading of the federation (each client protects each of
its own images).

One step, on a client with n images, clip C (``dp_clip``) and noise multiplier σ
(``dp_noise_multiplier``):

- **Poisson batch:** each of the n images joins with probability q = B / n, drawn from the OS's
  CSPRNG (``secure_rng``; ``dp_seed`` for tests), so the batch size varies around B. The
  accountant's amplification by sampling assumes exactly this draw, and a secret one;
- **per-sample gradients** with ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``),
  ``CHUNK`` samples at a time, so memory is CHUNK model-sized gradients, not B;
- each sample's gradient over all trained parameters jointly is **clipped** to L2 norm C;
- their sum gets **N(0, (σC)²)** per coordinate and is divided by B, the *expected* batch size
  (a fixed denominator, as Opacus uses with Poisson batches: the sensitivity of the mean is C/B
  whoever was drawn);
- the client's optimizer (Adam or SGD) steps on that gradient: post-processing, no privacy cost.

A round runs ``local_steps`` steps, or ``epochs · ceil(n / B)`` (expected epochs). The client's
**ledger** (``ClientState["dp_ledger"]``: rows of q, σ and steps) lives with the client, as
SCAFFOLD's c_i does, so its own accountant composes over exactly the rounds it trained, and it
refuses a round that would take it past its budget.

Why ``torch.func`` and not Opacus: the engine keeps each client's images on the device as uint8,
draws its own batches and augments them on the device, and reuses one model per worker across
clients. Opacus wants to own the model (``GradSampleModule``), the optimizer and the data loader;
``torch.func`` needs none of that and runs under the engine's bf16 autocast and channels-last
layout unchanged (docs/privacy.md has the measured cost).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedcifar.messages import ClientInstructions, Weights
from fedcifar.privacy.accountant import poisson_epsilon
from fedcifar.privacy.mechanism import Normal
from fedcifar.runtime import Runtime

CHUNK = 32  # samples whose per-sample gradients are held at once
LEDGER = "ledger"  # the tensor inside ClientState["dp_ledger"]: one (q, σ, steps) row per round trained


class PrivacyBudgetSpent(RuntimeError):
    """A client's next round would take its own ε past its budget: it does not train."""


def sample_rate(n: int, batch_size: int) -> float:
    """q = B / n (at most 1): each image's chance to be in a step's batch."""
    return min(1.0, batch_size / n)


def dp_steps(n: int, batch_size: int, epochs: int, steps: int) -> int:
    """Steps in one round: ``steps``, or ``epochs`` expected epochs of ceil(n / B) steps."""
    return steps or epochs * -(-n // batch_size)


def poisson_batches(
    n: int, rate: float, total: int, per_epoch: int, rng: np.random.Generator, device: torch.device | str = "cpu"
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (epoch, index tensor) for ``total`` Poisson batches: each index joins with ``rate``."""
    for step in range(total):
        idx = np.flatnonzero(rng.random(n) < rate)
        yield step // max(per_epoch, 1), torch.from_numpy(idx).to(device)


def clipped_sum(per_sample: Mapping[str, torch.Tensor], clip: float) -> tuple[Weights, torch.Tensor]:
    """(Σ_i g_i · min(1, C / ||g_i||), ||g_i|| for each i): ``per_sample`` holds (B, ...) tensors."""
    norms = torch.sqrt(sum(g.flatten(1).float().square().sum(1) for g in per_sample.values()))
    factors = (clip / (norms + 1e-12)).clamp(max=1.0)
    return {k: torch.einsum("b,b...->...", factors, g.float()) for k, g in per_sample.items()}, norms


class PrivateGradients:
    """Fills ``p.grad`` of the model's trained parameters with one DP-SGD step's noised mean gradient.

    Called as ``(x, y) -> (mean loss, logits)`` in place of forward + backward. The loss is plain
    cross-entropy: an objective that couples samples (FedDecorr) or uses the client's label
    counts (FedLC) has no per-sample sensitivity, and the config refuses it.
    """

    def __init__(
        self, model: nn.Module, clip: float, noise_multiplier: float, batch_size: int, normal: Normal, runtime: Runtime
    ) -> None:
        self.model = model
        self.params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        self.clip, self.noise_multiplier, self.batch_size = clip, noise_multiplier, batch_size
        self.normal, self.runtime = normal, runtime
        self.last_norms = torch.empty(0)  # the last step's per-sample gradient norms (for tests)

        def loss_one(params: Mapping[str, torch.Tensor], buffers, x: torch.Tensor, y: torch.Tensor):
            logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
            return F.cross_entropy(logits.float(), y.unsqueeze(0)), logits.squeeze(0)

        self._per_sample = vmap(grad(loss_one, has_aux=True), in_dims=(None, None, 0, 0))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = {k: p.detach() for k, p in self.params.items()}
        buffers = {k: b.detach() for k, b in self.model.named_buffers()}
        total = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
        logits, norms = [], []
        for start in range(0, len(y), CHUNK):
            with self.runtime.autocast():
                grads, out = self._per_sample(params, buffers, x[start : start + CHUNK], y[start : start + CHUNK])
            summed, chunk_norms = clipped_sum(grads, self.clip)
            for k, t in total.items():
                t.add_(summed[k])
            logits.append(out.detach().float())
            norms.append(chunk_norms)
        std = self.noise_multiplier * self.clip
        for k, p in self.params.items():
            noisy = total[k] + std * self.normal(p.shape, p.device)
            p.grad = (noisy / self.batch_size).to(p.dtype)
        logits = torch.cat(logits) if logits else torch.zeros(0, self.model.fc.out_features, device=y.device)
        self.last_norms = torch.cat(norms) if norms else torch.zeros(0)
        loss = F.cross_entropy(logits, y) if len(y) else torch.zeros((), device=y.device)
        return loss, logits


@dataclass(frozen=True)
class RecordPlan:
    """What one round of DP-SGD costs a client with ``n`` images, and its ledger after it."""

    rate: float
    noise_multiplier: float
    steps: int
    per_epoch: int

    @classmethod
    def of(cls, n: int, instructions: ClientInstructions) -> RecordPlan:
        i = instructions
        return cls(
            sample_rate(n, i.batch_size),
            i.dp_sample_noise,
            dp_steps(n, i.batch_size, i.epochs, i.steps),
            -(-n // i.batch_size),
        )

    def row(self) -> list[float]:
        return [self.rate, self.noise_multiplier, float(self.steps)]


def ledger_rows(entry: Mapping[str, torch.Tensor] | None) -> list[list[float]]:
    """The (q, σ, steps) rows of a client's ``dp_ledger`` state entry (none yet: [])."""
    if not entry:
        return []
    return [[float(v) for v in row] for row in entry[LEDGER].tolist()]


def ledger_entry(rows: list[list[float]]) -> Weights:
    """The ``dp_ledger`` state entry for ``rows`` (float64: rates and counts stay exact)."""
    return {LEDGER: torch.tensor(rows, dtype=torch.float64).reshape(-1, 3)}


def ledger_epsilon(rows: list[list[float]], delta: float) -> float:
    """A client's ε at ``delta`` after the Poisson-sampled Gaussian steps of ``rows``."""
    return poisson_epsilon([(q, z, int(n)) for q, z, n in rows], delta)


def spend_check(rows: list[list[float]], plan: RecordPlan, delta: float, budget: float) -> float:
    """The client's ε after one more round of ``plan``; raises :class:`PrivacyBudgetSpent` past ``budget``."""
    after = ledger_epsilon([*rows, plan.row()], delta)
    if budget > 0 and after > budget:
        before = ledger_epsilon(rows, delta)
        raise PrivacyBudgetSpent(
            f"privacy budget spent: this client is at epsilon={before:.3g}, one more round would reach "
            f"{after:.3g} > {budget:g} (delta={delta:g})"
        )
    return after
