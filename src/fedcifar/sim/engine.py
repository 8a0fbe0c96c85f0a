"""``run_training``: a federation simulated in this process.

It wires the pieces together: the run directory (:mod:`fedcifar.track.rundir`), the
strategy, the partition, the :class:`~fedcifar.sim.local.LocalBackend`, and the one round
loop (:mod:`fedcifar.server.loop`) that every backend shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from fedcifar.client.train import read_weights
from fedcifar.config import Config
from fedcifar.data.cifar100 import Cifar100
from fedcifar.federation import model_spec, partition_for
from fedcifar.runtime import resolve_runtime
from fedcifar.server.loop import RoundCallback, Server, run_rounds
from fedcifar.sim.local import LocalBackend
from fedcifar.strategy.population import Population
from fedcifar.strategy.registry import build_strategy
from fedcifar.track.rundir import RunDir


def run_training(
    cfg: Config,
    run_dir: str | Path,
    data: Cifar100,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[RoundCallback] = (),
) -> pd.DataFrame:
    """Train ``cfg.rounds`` rounds into ``run_dir`` (continuing its checkpoint if ``resume``)."""
    strategy = build_strategy(cfg)
    runtime = resolve_runtime(cfg)
    runtime.apply_global_settings()
    run, resumed = RunDir.open(run_dir, cfg, model_spec(cfg).to_dict(), resume)
    if resumed.round:
        weights = {k: v.to(runtime.device) for k, v in resumed.weights.items()}
        tensors = {k: v.to(runtime.device) for k, v in resumed.strategy_tensors.items()}
        strategy.load_state_dict(tensors, resumed.strategy_meta)
    else:
        weights = read_weights(model_spec(cfg).build(seed=cfg.seed).to(runtime.device))

    labels = data.train_y.numpy()
    partition = partition_for(cfg, labels)
    run.write_partition(partition, labels, overwrite=not resume)
    population = Population.from_partition(labels, partition)
    strategy.setup(population)
    with LocalBackend(cfg, data, partition, runtime) as backend:
        if progress:
            tqdm.write(f"fedcifar: {cfg.rounds} rounds on {runtime.describe()} -> {run.path}")
        server = Server(cfg, strategy, backend, population)
        return run_rounds(server, run, weights, resumed.round, progress=progress, callbacks=callbacks)
