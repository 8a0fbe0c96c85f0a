"""The run directory: everything a run writes, in one place.

A round is recorded in this order: its row in ``metrics.csv``, the plots, the exported
model (``model_global.safetensors`` and ``.pth``), then the resume checkpoint. The
checkpoint comes last, so it marks the round complete; a resumed run drops metric rows past
it. ``progress.json`` says how far the round in progress is, for the dashboard; it is
rewritten (atomically) as each client's result arrives. Every file is written atomically and
durably (:mod:`fedcifar.atomic`), and a run holds the directory's lock
(:mod:`fedcifar.track.lock`) while it writes, so a run killed at any instant resumes from its
last checkpoint with nothing left behind.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedcifar.atomic import atomic_path, atomic_write_text
from fedcifar.config import STRATEGY_DEFAULTS, Config, config_from_dict, effective, save_yaml
from fedcifar.data.partition import Partition, class_counts
from fedcifar.messages import Weights
from fedcifar.track.checkpoint import CheckpointError, export_global, load_checkpoint, save_checkpoint
from fedcifar.track.lock import acquire, release
from fedcifar.track.metrics import PROGRESS_FILE, MetricsLog
from fedcifar.track.plots import plot_curves, plot_partition
from fedcifar.track.tensorboard import TENSORBOARD_DIR, ScalarLog

PARTITION_CSV = "partition.csv"


@dataclass(frozen=True)
class Resumed:
    """The last complete round of a run directory: where a resumed run continues from."""

    round: int
    weights: Weights
    strategy_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    strategy_meta: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's whole document
    client_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the clients' own state, if kept


def write_partition(partition: Partition, labels: np.ndarray, out_dir: Path, title: str = "") -> np.ndarray:
    """Write ``partition.csv`` (clients x classes counts) and ``partition.png``; return the counts."""
    counts = class_counts(labels, partition, num_classes=100)
    write_class_counts(counts, out_dir, title)
    return counts


def write_class_counts(counts: np.ndarray, out_dir: Path, title: str = "") -> None:
    """``partition.csv`` and ``partition.png`` from a clients x classes table of sample counts."""
    frame = pd.DataFrame(counts, columns=[f"class_{c}" for c in range(counts.shape[1])])
    frame.insert(0, "client", range(len(counts)))
    frame.insert(1, "total", counts.sum(axis=1))
    with atomic_path(Path(out_dir) / PARTITION_CSV) as tmp:
        frame.to_csv(tmp, index=False)
    plot_partition(counts, Path(out_dir) / "partition.png", title)


# What a resume may change: the horizon, and DP's budget (the composition so far is in the checkpoint).
RESUMABLE_CHANGES = ("rounds", "target_epsilon")


def config_changes(saved: Config, cfg: Config, ignore: tuple[str, ...] = ("rounds",)) -> str:
    """``key: saved -> new`` for each key (but ``ignore``) whose effective value differs; empty when none does.

    ``server_lr=0`` and ``tau=0`` mean the strategy's default, so a run saved with the value
    written out is the same run as one asking for the default (:func:`fedcifar.config.effective`).
    """
    old, new = _effective_dict(saved), _effective_dict(cfg)
    return ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if k not in ignore and old[k] != new[k])


def _effective_dict(cfg: Config) -> dict[str, Any]:
    return cfg.to_dict() | {key: effective(cfg, key) for key in STRATEGY_DEFAULTS}


def check_resumable(path: Path, done: int, saved: Config, cfg: Config) -> None:
    """Raise unless ``cfg`` may continue a run of ``saved`` that completed ``done`` rounds."""
    changed = config_changes(saved, cfg, ignore=RESUMABLE_CHANGES)
    if changed:
        raise CheckpointError(
            f"config differs from the checkpoint's in {path} ({changed}); only {' and '.join(RESUMABLE_CHANGES)} may change"
        )
    if cfg.rounds < done:
        raise CheckpointError(f"{path} has completed round {done}; rounds={cfg.rounds} would undo it")


class RunDir:
    """Writes one federated run's directory; :meth:`open` starts it or picks it up."""

    def __init__(
        self, path: Path, cfg: Config, model_info: Mapping[str, Any], log: MetricsLog, scalars: ScalarLog | None = None
    ) -> None:
        self.path = path
        self.cfg = cfg
        self.model_info = dict(model_info)
        self.log = log
        self.scalars = scalars  # TensorBoard's copy of each row, if tensorboard is installed

    @classmethod
    def open(
        cls,
        path: str | Path,
        cfg: Config,
        model_info: Mapping[str, Any],
        resume: bool,
        tensorboard_dir: str | Path | None = None,
    ) -> tuple[RunDir, Resumed]:
        """Start a run in ``path``, or continue its checkpoint (only ``rounds`` may differ).

        The run holds the directory's lock until the returned RunDir is garbage-collected (or
        the process ends): another process gets "run directory in use (pid N)". TensorBoard
        event files go to ``tensorboard_dir`` (default ``path/tensorboard``) when installed.
        """
        path = Path(path)
        acquire(path)
        try:
            resumed, log = cls._start(path, cfg, resume)
        except BaseException:
            release(path)
            raise
        scalars = ScalarLog(tensorboard_dir or path / TENSORBOARD_DIR, first_round=resumed.round + 1)
        run = cls(path, cfg, model_info, log, scalars)
        weakref.finalize(run, release, path)
        weakref.finalize(run, scalars.close)
        return run, resumed

    @staticmethod
    def _start(path: Path, cfg: Config, resume: bool) -> tuple[Resumed, MetricsLog]:
        resumed = Resumed(0, {})
        if resume:
            ckpt = load_checkpoint(path)
            check_resumable(path, ckpt.round, config_from_dict(ckpt.meta["config"]), cfg)
            strategy_meta = ckpt.meta.get("strategy", {})
            resumed = Resumed(
                ckpt.round, ckpt.weights, ckpt.strategy_tensors, strategy_meta, ckpt.meta, ckpt.client_tensors
            )
            log = MetricsLog.resume(path, ckpt.round)
        else:
            log = MetricsLog(path)
        save_yaml(cfg, path / "config.yaml")
        return resumed, log

    @property
    def frame(self) -> pd.DataFrame:
        return self.log.frame

    def progress(self, server_round: int, done: int, failed: int, total: int, images: int) -> None:
        doc = {
            "round": server_round,
            "clients_done": done,
            "clients_failed": failed,
            "clients_total": total,
            "images": images,
            "time": time.time(),
        }
        atomic_write_text(self.path / PROGRESS_FILE, json.dumps(doc))

    def record(
        self,
        row: dict[str, Any],
        weights: Mapping[str, torch.Tensor],
        strategy_state: tuple[Weights, dict[str, Any]],
        extra_meta: Mapping[str, Any] | None = None,
        client_state: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Write a finished round: metrics row, plots, exported model, then the checkpoint."""
        self.log.append(row)
        if self.scalars is not None:
            self.scalars.add_row(row)
        plot_curves(self.log.frame, self.path)
        tested = self.log.frame["test_acc"].dropna() if "test_acc" in self.log.frame else pd.Series(dtype=float)
        info = {**self.model_info, "round": row["round"], "test_acc": float(tested.iloc[-1]) if len(tested) else None}
        export_global(self.path, weights, info)
        tensors, meta = strategy_state
        doc = {"config": self.cfg.to_dict(), "model": self.model_info, "strategy": meta, **(extra_meta or {})}
        save_checkpoint(self.path, row["round"], weights, tensors, doc, client_state)
