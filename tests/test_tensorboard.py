"""TensorBoard's copy of metrics.csv: the same numbers per round, nothing when not installed."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest

from fedcifar.track.tensorboard import ScalarLog, scalars
from helpers import tiny_config

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed"
)
TAGS = ["train_loss", "test_acc", "test_loss", "val_acc", "round_seconds"]


def test_scalars_keep_finite_numbers_but_the_round():
    row = {"round": 3, "a": 1, "b": np.float64(0.5), "c": np.int64(7), "d": float("nan"), "e": "x", "f": True}
    assert scalars(row) == {"a": 1.0, "b": 0.5, "c": 7.0}


def test_without_tensorboard_nothing_is_written_and_nothing_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    log = ScalarLog(tmp_path / "tb")
    log.add_row({"round": 1, "test_acc": 0.5})
    log.close()
    assert log.writer is None and not (tmp_path / "tb").exists()


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@needs_tensorboard
def test_event_files_equal_metrics_csv_and_a_resume_rewrites_its_steps_once(cifar, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from fedcifar.sim.engine import run_training

    cfg = tiny_config(val_size=100)
    run_training(cfg, tmp_path, cifar, progress=False)
    # A run killed after writing round 3's scalars but before its checkpoint left this behind:
    with SummaryWriter(str(tmp_path / "tensorboard")) as stale:
        stale.add_scalar("test_acc", 999.0, 3)
    run_training(cfg.replace(rounds=3), tmp_path, cifar, resume=True, progress=False)
    frame = pd.read_csv(tmp_path / "metrics.csv")
    events = _events(tmp_path / "tensorboard")
    for tag in TAGS:
        expected = list(zip(frame["round"], frame[tag], strict=True))
        assert [s for s, _ in events[tag]] == [1, 2, 3], tag  # each step once: the stale 3 is purged
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert "clients" not in events and "round" not in events  # text columns and the step itself
