"""What the dashboard reports about a run directory, from the files training writes."""

from __future__ import annotations

import json
import os
import time

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


def test_a_dp_run_reports_its_epsilon_per_round(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("rounds: 3\n")
    (run / "metrics.csv").write_text("round,train_loss,test_acc,dp_epsilon\n1,4.5,0.01,2.71\n2,4.4,0.02,3.33\n")
    assert RunReader(run).status(now=time.time())["metrics"]["dp_epsilon"] == [2.71, 3.33]
    write_run(tmp_path / "plain", 2, [(1, 4.5, 0.02, 4.4, 0.03, 0.1, 20.0, "")], at=1000.0)
    assert RunReader(tmp_path / "plain").status(now=1010.0)["metrics"]["dp_epsilon"] == [None]


def test_finished_and_stalled(tmp_path):
    run = tmp_path / "run"
    write_run(run, 2, [(1, 4.5, 0.02, 4.4, 0.03, 0.1, 20.0, ""), (2, 4.2, 0.05, 4.1, 0.06, 0.2, 20.0, "")], at=1000.0)
    assert RunReader(run).status(now=5000.0)["state"] == "finished"
    write_run(run, 9, [(1, 4.5, 0.02, 4.4, 0.03, 0.1, 20.0, "")], at=1000.0)
    reader = RunReader(run)
    assert reader.status(now=1050.0)["state"] == "training"
    assert reader.status(now=1000.0 + 3 * 20 + 61)["state"] == "stalled"


def write_progress(run_dir, at: float, text: str | None = None, **fields) -> None:
    """progress.json as the round loop writes it (or ``text`` verbatim), with mtime ``at``."""
    body = {"round": 3, "clients_done": 5, "clients_failed": 1, "clients_total": 16, "images": 12345, "time": at}
    (run_dir / "progress.json").write_text(json.dumps({**body, **fields}) if text is None else text)
    os.utime(run_dir / "progress.json", (at, at))


TWO_ROUNDS = [(1, 4.5, 0.02, 4.4, 0.03, 0.1, 20.0, ""), (2, 4.2, 0.05, 4.1, 0.06, 0.2, 30.0, "")]


def test_progress_json_of_the_running_round_gives_exact_counts(tmp_path):
    run = tmp_path / "run"
    write_run(run, 10, TWO_ROUNDS, at=1000.0)
    write_progress(run, at=1005.0)
    reader = RunReader(run)
    status = reader.status(now=1010.0)
    assert status["state"] == "training" and status["current_round"] == 3
    assert (status["clients_done"], status["clients_failed"], status["clients_total"]) == (5, 1, 16)
    assert status["round_images"] == 12345
    assert status["round_progress"] == pytest.approx(6 / 16)
    assert status["round_progress_estimate"] is None  # the time-based guess only without exact counts
    assert status["idle_s"] == pytest.approx(5.0) and status["round_elapsed_s"] == pytest.approx(10.0)

    write_progress(run, at=1007.0, clients_done=12, images=30000)  # the next client's result: re-read
    status = reader.status(now=1010.0)
    assert (status["clients_done"], status["round_images"]) == (12, 30000)
    assert status["round_progress"] == pytest.approx(13 / 16)


def test_progress_json_in_the_first_round(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("rounds: 5\n")
    os.utime(run / "config.yaml", (1000.0, 1000.0))
    write_progress(run, at=1001.0, round=1, clients_done=0, clients_failed=0, images=0)  # the round's start
    status = RunReader(run).status(now=1030.0)
    assert status["current_round"] == 1 and status["round_progress"] == 0.0
    assert (status["clients_done"], status["clients_total"]) == (0, 16)


@pytest.mark.parametrize(
    ("why", "at", "fields"),
    [
        ("its round is already in metrics.csv", 1002.0, {"round": 2, "clients_done": 15}),
        ("written before the run (re)started", 990.0, {"round": 3}),
        ("a round ahead of metrics.csv", 1005.0, {"round": 4}),
    ],
)
def test_progress_json_of_another_round_falls_back_to_the_estimate(tmp_path, why, at, fields):
    run = tmp_path / "run"
    write_run(run, 10, TWO_ROUNDS, at=1000.0)
    write_progress(run, at=at, **fields)
    status = RunReader(run).status(now=1010.0)
    assert status["state"] == "training" and status["current_round"] == 3, why
    assert status["round_progress"] is None and status["clients_done"] is None and status["clients_total"] is None
    assert status["round_progress_estimate"] == pytest.approx(0.4), why


INVALID_PROGRESS = {
    "truncated": '{"round": 3, "clients_done": 5, "clie',
    "empty": "",
    "not an object": "[3, 5, 1, 16]",
    "more reported than sampled": json.dumps(
        {"round": 3, "clients_done": 15, "clients_failed": 2, "clients_total": 16, "time": 1005.0}
    ),
    "no clients sampled": json.dumps(
        {"round": 3, "clients_done": 0, "clients_failed": 0, "clients_total": 0, "time": 1005.0}
    ),
    "text count": json.dumps({"round": 3, "clients_done": "5", "clients_failed": 1, "clients_total": 16, "time": 1}),
    "no time": json.dumps({"round": 3, "clients_done": 5, "clients_failed": 1, "clients_total": 16}),
    "not utf-8": "\udcff",
}


@pytest.mark.parametrize("kind", sorted(INVALID_PROGRESS))
def test_an_invalid_progress_json_is_ignored_or_the_last_good_one_kept(tmp_path, kind):
    run = tmp_path / "run"
    write_run(run, 10, TWO_ROUNDS, at=1000.0)
    text = INVALID_PROGRESS[kind]
    path = run / "progress.json"

    def write_bad(at: float) -> None:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        os.utime(path, (at, at))

    write_bad(1005.0)
    status = RunReader(run).status(now=1010.0)  # never saw a good one: the estimate
    assert status["state"] == "training" and status["round_progress"] is None and status["clients_done"] is None
    assert status["round_progress_estimate"] == pytest.approx(0.4)

    reader = RunReader(run)
    write_progress(run, at=1004.0)
    assert reader.status(now=1010.0)["clients_done"] == 5
    write_bad(1006.0)  # e.g. seen half-written: the last good counts stay
    status = reader.status(now=1010.0)
    assert status["clients_done"] == 5 and status["round_progress"] == pytest.approx(6 / 16)


def test_progress_json_shows_a_long_round_is_alive(tmp_path):
    run = tmp_path / "run"
    write_run(run, 9, [(1, 4.5, 0.02, 4.4, 0.03, 0.1, 20.0, "")], at=1000.0)
    quiet = 1000.0 + 3 * 20 + 61  # stalled by round times alone
    write_progress(run, at=1100.0, round=2)
    reader = RunReader(run)
    status = reader.status(now=quiet)
    assert status["state"] == "training" and status["clients_done"] == 5
    assert status["idle_s"] == pytest.approx(quiet - 1100.0)
    status = reader.status(now=1100.0 + 3 * 20 + 61)  # no client result for as long: stalled
    assert status["state"] == "stalled" and status["round_progress"] is None
    assert status["idle_s"] == pytest.approx(3 * 20 + 61)

    write_progress(run, at=1100.0, round=1, clients_done=15)  # a finished round's file shows no life
    assert RunReader(run).status(now=quiet)["state"] == "stalled"


def test_api_run_returns_the_exact_progress(tmp_path, fake_labels):
    from fastapi.testclient import TestClient

    from fedcifar.serve.main import create_app
    from fedcifar.serve.settings import ServeSettings

    run = tmp_path / "run"
    now = time.time()
    write_run(run, 10, TWO_ROUNDS, at=now - 10)
    write_progress(run, at=now - 2, clients_done=7, clients_failed=2, clients_total=12, images=4321)
    settings = ServeSettings(run_dir=run, labels=fake_labels, precision="fp32")
    with TestClient(create_app(settings)) as client:
        body = client.get("/api/run").json()
    assert body["state"] == "training" and body["current_round"] == 3 and body["rounds_done"] == 2
    assert (body["clients_done"], body["clients_failed"], body["clients_total"]) == (7, 2, 12)
    assert body["round_images"] == 4321
    assert body["round_progress"] == pytest.approx(9 / 12) and body["round_progress_estimate"] is None
    assert body["idle_s"] == pytest.approx(2.0, abs=5.0)
