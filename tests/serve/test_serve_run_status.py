"""What the dashboard reports about a run directory, from the files training writes."""

from __future__ import annotations

import os

import pytest

from fedcifar.serve.run_status import RunReader

HEADER = "round,train_loss,train_acc,test_loss,test_acc,test_top5,round_seconds,clients\n"


def write_run(run_dir, rounds_total: int, rows: list[tuple], at: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"rounds: {rounds_total}\nnum_clients: 64\n")
    lines = [HEADER] + [",".join("" if v is None else str(v) for v in row) + "\n" for row in rows]
    (run_dir / "metrics.csv").write_text("".join(lines))
    for name in ("config.yaml", "metrics.csv"):
        os.utime(run_dir / name, (at, at))


def test_waiting_before_training_writes_anything(tmp_path):
    status = RunReader(tmp_path / "run").status()
    assert status["state"] == "waiting" and status["rounds_done"] == 0 and status["metrics"]["round"] == []


def test_first_round_running_has_no_estimate(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("rounds: 5\n")
    os.utime(run / "config.yaml", (1000.0, 1000.0))
    status = RunReader(run).status(now=1030.0)
    assert status["state"] == "training" and status["current_round"] == 1 and status["total_rounds"] == 5
    assert status["round_progress_estimate"] is None and status["round_elapsed_s"] == pytest.approx(30.0)


def test_progress_estimate_curves_and_missing_test_values(tmp_path):
    run = tmp_path / "run"
    rows = [(1, 4.5, 0.02, None, None, None, 20.0, "1 2"), (2, 4.2, 0.05, 4.1, 0.06, 0.2, 30.0, "3 4")]
    write_run(run, 10, rows, at=1000.0)
    status = RunReader(run).status(now=1010.0)
    assert status["state"] == "training" and status["rounds_done"] == 2 and status["current_round"] == 3
    assert status["mean_round_s"] == pytest.approx(25.0)
    assert status["round_progress_estimate"] == pytest.approx(0.4)
    assert status["metrics"]["test_acc"] == [None, 0.06]
    assert status["metrics"]["train_loss"] == [4.5, 4.2]
    assert "clients" not in status["metrics"]


def test_finished_and_stalled(tmp_path):
    run = tmp_path / "run"
    write_run(run, 2, [(1, 4.5, 0.02, 4.4, 0.03, 0.1, 20.0, ""), (2, 4.2, 0.05, 4.1, 0.06, 0.2, 20.0, "")], at=1000.0)
    assert RunReader(run).status(now=5000.0)["state"] == "finished"
    write_run(run, 9, [(1, 4.5, 0.02, 4.4, 0.03, 0.1, 20.0, "")], at=1000.0)
    reader = RunReader(run)
    assert reader.status(now=1050.0)["state"] == "training"
    assert reader.status(now=1000.0 + 3 * 20 + 61)["state"] == "stalled"
