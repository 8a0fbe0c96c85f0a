"""``run_training``: a federation simulated in this process.

It loads the partition's clients into a :class:`~fedcifar.sim.local.LocalBackend` and hands it
to the server (:func:`fedcifar.server.loop.run_federation`), which every backend shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from fedcifar.calibrate import resolve_runtime as calibrated_runtime
from fedcifar.config import Config
from fedcifar.data.cifar100 import Cifar100
from fedcifar.federation import partition_for
from fedcifar.server.loop import RoundCallback, run_federation
from fedcifar.sim.local import LocalBackend
from fedcifar.strategy.population import Population
from fedcifar.track.lock import run_dir_lock
from fedcifar.track.rundir import write_partition


def run_training(
    cfg: Config,
    run_dir: str | Path,
    data: Cifar100,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[RoundCallback] = (),
    tensorboard_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Train ``cfg.rounds`` rounds into ``run_dir`` (continuing its checkpoint if ``resume``).

    ``tensorboard_dir``: where TensorBoard event files go (default ``run_dir/tensorboard``).
    """
    with run_dir_lock(run_dir):  # before the first write: one trainer per run directory
        return _run_training(cfg, Path(run_dir), data, resume, progress, callbacks, tensorboard_dir)


def _run_training(
    cfg: Config,
    run_dir: Path,
    data: Cifar100,
    resume: bool,
    progress: bool,
    callbacks: Sequence[RoundCallback],
    tensorboard_dir: str | Path | None = None,
) -> pd.DataFrame:
    runtime = calibrated_runtime(cfg)
    runtime.apply_global_settings()
    labels = data.train_y.numpy()
    partition = partition_for(cfg, labels)
    if not resume or not (run_dir / "partition.csv").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_partition(partition, labels, run_dir, f"{cfg.partitioner} partition, {cfg.num_clients} clients")
    population = Population.from_partition(labels, partition)
    with LocalBackend(cfg, data, partition, runtime) as backend:
        if progress:
            tqdm.write(f"fedcifar: {cfg.rounds} rounds on {runtime.describe()} -> {run_dir}")
        return run_federation(
            cfg,
            run_dir,
            backend,
            population,
            resume=resume,
            device=runtime.device,
            progress=progress,
            callbacks=callbacks,
            tensorboard_dir=tensorboard_dir,
        )
