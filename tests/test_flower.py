"""The Flower reference app runs for real in Flower's simulation engine with the Ray backend.

A tiny workload (2 rounds, 2 clients, 2 minibatches each) on the real CIFAR-100 files, in a
child process as `fedcifar bench` runs it; about 45 s, most of it Ray starting up.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedcifar.bench.run import PEERS_DIR
from fedcifar.bench.workload import Workload

pytest.importorskip("flwr", reason="the [flower] extra is not installed")
pytest.importorskip("ray", reason="the [flower] extra is not installed")

pytestmark = pytest.mark.integration  # Ray and Flower in a child process

SIMULATE = PEERS_DIR / "flower_app" / "simulate.py"


def test_flower_simulation_trains_the_workloads_clients(tmp_path, cifar):
    w = Workload(rounds=2, clients_per_round=2, local_steps=2, batch_size=16, eval_limit=200)
    w.save(tmp_path / "w.json")
    proc = subprocess.run(
        [sys.executable, str(SIMULATE), str(tmp_path / "w.json"), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["impl"] == "flower" and len(result["round_seconds"]) == 2
    assert result["train_images"] == [64, 64]  # 2 clients x 2 minibatches of 16
    assert result["seconds_per_round"] > 0 and result["images_per_sec"] > 0
    # (Flower's log lines are not checked: their wording is Flower's and changes between releases.)
