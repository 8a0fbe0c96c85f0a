"""The centralized reference: the federated run's model, optimizer, batch and augmentation on
all 50,000 training images at once, for the same number of training images.

The gap between its curve and the federated one is what federating under the configured
partition costs. It writes an ordinary run directory (``metrics.csv`` rows are epochs, the
last one possibly partial), so ``fedcifar plot`` and ``fedcifar serve`` work on it, and its
test rows carry the same per-client fairness columns, computed on the same partition.

One Adam optimizer runs through the whole training, as a centralized run would; its state is
in the checkpoint, and each epoch's shuffling and augmentation come from a generator seeded
by (seed, epoch), so ``--resume`` continues exactly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fedcifar.client.evaluate import eval_counts
from fedcifar.client.train import FitStats, fit, local_images, make_optimizer, minibatches, read_weights
from fedcifar.config import Config, ConfigError
from fedcifar.data.cifar100 import Cifar100
from fedcifar.federation import model_spec, partition_for
from fedcifar.runtime import resolve_runtime
from fedcifar.server.rows import summary_line, test_row
from fedcifar.strategy.population import Population
from fedcifar.strategy.registry import SELECTORS
from fedcifar.strategy.selection import SelectionContext
from fedcifar.track.checkpoint import CheckpointError
from fedcifar.track.rundir import Resumed, RunDir

KIND = "centralized"


def federated_image_budget(cfg: Config, sizes: np.ndarray) -> int:
    """Training images a federated run of ``cfg`` trains in all rounds, from its schedule alone.

    Selection is redrawn from (seed, round) as the engine draws it; a selector that needs the
    clients' losses (power_of_choice) cannot be replayed without training, so it is refused.
    """
    select = SELECTORS[cfg.client_selection]
    total = 0
    for server_round in range(1, cfg.rounds + 1):
        try:
            sampled = select(SelectionContext(server_round, cfg.seed, cfg.clients_per_round, sizes))
        except RuntimeError:
            raise ConfigError(
                f"client_selection={cfg.client_selection} depends on training; give the budget with --images"
            ) from None
        total += sum(local_images(int(sizes[c]), cfg.batch_size, cfg.local_epochs, cfg.local_steps) for c in sampled)
    return total


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, 0xCE17, epoch]).generate_state(1)[0])


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"optim.{i}.{k}": v for i, st in optimizer.state_dict()["state"].items() for k, v in st.items()}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _restore(resumed: Resumed, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device) -> tuple[int, int]:
    """Load a centralized checkpoint into ``model`` and ``optimizer``; return (budget, images trained)."""
    meta = resumed.meta.get(KIND)
    if not isinstance(meta, dict):
        raise CheckpointError("the run directory holds a federated run, not a centralized one")
    model.load_state_dict({k: v.to(device) for k, v in resumed.weights.items()})
    _load_optimizer(optimizer, {k: v.to(device) for k, v in resumed.strategy_tensors.items()})
    return int(meta["budget"]), int(meta["trained"])


def _epoch_row(epoch: int, stats: FitStats, n: int, seconds: float) -> dict[str, Any]:
    return {
        "round": epoch,
        "train_loss": stats.loss,
        "train_acc": stats.acc,
        "num_examples": n,
        "train_images": stats.images,
        "train_seconds": seconds,
        "images_per_sec": stats.images / max(seconds, 1e-9),
    }


def run_centralized(
    cfg: Config,
    run_dir: str | Path,
    data: Cifar100,
    *,
    images: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train on the whole training set for ``images`` images (0: the federated budget of ``cfg``).

    The last epoch stops at the first whole batch that reaches the budget.
    """
    if cfg.lr_schedule != "constant":
        raise ConfigError(f"centralized trains at a constant lr; lr_schedule={cfg.lr_schedule} is for federated runs")
    if cfg.val_size:
        raise ConfigError("val_size > 0 is for federated runs (train, tune); centralized trains on every image")
    runtime = resolve_runtime(cfg.replace(workers=1))  # one model: every core on its ops
    runtime.apply_global_settings()
    labels = data.train_y.numpy()
    population = Population.from_partition(labels, partition_for(cfg, labels))
    model = runtime.prepare(model_spec(cfg).build(seed=cfg.seed))
    optimizer = make_optimizer(model, cfg.client_optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, runtime)
    run, resumed = RunDir.open(run_dir, cfg, model_spec(cfg).to_dict(), resume)
    budget, trained = images or federated_image_budget(cfg, population.sizes), 0
    if resume:
        budget, trained = _restore(resumed, model, optimizer, runtime.device)

    data = data.to(runtime.device)
    test_x, test_y = data.test_x, data.test_y
    if cfg.eval_limit:
        test_x, test_y = test_x[: cfg.eval_limit], test_y[: cfg.eval_limit]
    n = len(data.train_y)
    total_epochs = -(-budget // n)
    if progress:
        tqdm.write(f"fedcifar centralized: {budget:,} images ({budget / n:.2f} epochs) on {runtime.describe()}")
    for epoch in tqdm(range(resumed.round + 1, total_epochs + 1), desc="epochs", disable=not progress):
        t0 = time.perf_counter()
        steps = 0 if budget - trained >= n else -(-(budget - trained) // cfg.batch_size)
        generator = torch.Generator(device=runtime.device).manual_seed(epoch_seed(cfg.seed, epoch))
        batches = minibatches(n, cfg.batch_size, 1, steps, generator)
        stats = fit(model, optimizer, data.train_x, data.train_y, batches, generator, runtime, grad_clip=cfg.grad_clip)
        trained += stats.images
        row = _epoch_row(epoch, stats, n, time.perf_counter() - t0)
        t_eval = time.perf_counter()
        row.update(
            test_row(
                eval_counts(model, None, test_x, test_y, runtime, runtime.eval_batch_size), population.label_counts
            )
        )
        row["eval_seconds"] = time.perf_counter() - t_eval
        row["round_seconds"] = time.perf_counter() - t0
        optimizer_state = (_optimizer_tensors(optimizer), {})
        run.record(row, read_weights(model), optimizer_state, {KIND: {"budget": budget, "trained": trained}})
        if progress:
            tqdm.write(summary_line(row, total_epochs).replace("round", "epoch", 1))
    return run.frame
