"""The same Flower apps on Flower's Simulation Runtime (Ray): `fedcifar federation simulate`.

One tiny run through the CLI (a simulation SuperLink on loopback, a private Ray instance, 4
virtual SuperNodes) gives a complete run directory whose first round equals the same config
through the local backend; while it runs, every listening socket of its processes (Ray's
included) is on 127.0.0.1, and afterwards none of them is left.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("flwr", reason="the [flower] extra is not installed")

from flwr.app import Context, RecordDict  # noqa: E402

from fedcifar.cli import main  # noqa: E402
from fedcifar.config import build_config  # noqa: E402
from fedcifar.data.cifar100 import DataError  # noqa: E402
from fedcifar.flower.client_app import shard_folder  # noqa: E402
from fedcifar.flower.deploy import STATE_FILE, Federation  # noqa: E402
from fedcifar.flower.procs import listening_sockets  # noqa: E402
from fedcifar.flower.simulation import RayOptions  # noqa: E402
from fedcifar.sim.engine import run_training  # noqa: E402
from fedcifar.strategy.selection import uniform  # noqa: E402
from helpers import set_args, tiny  # noqa: E402

# fp32 and one thread a client, so a virtual node's update equals a worker thread's
FLOWER = tiny(local_steps=3, eval_limit=500, eval_batch_size=250, threads_per_worker=1, precision="fp32", workers=None)


def _context(node_config: dict, run_config: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)


def test_the_shard_folder_comes_from_the_node_config_else_the_run_config():
    both = _context({"partition-id": 0, "data-path": "/node"}, {"data-path": "/run"})
    assert shard_folder(both) == "/node"  # a SuperNode of a deployment names its own
    simulated = _context({"partition-id": 0, "num-partitions": 4}, {"data-path": "/run"})
    assert shard_folder(simulated) == "/run"  # a virtual node of the Simulation Runtime has none
    deployed = _context({"partition-id": 0, "data-path": "/node"}, {"data-path": ""})  # the app's default
    assert shard_folder(deployed) == "/node"
    with pytest.raises(DataError, match="no data-path"):
        shard_folder(_context({"partition-id": 0}, {"data-path": ""}))


def test_ray_runs_privately_on_loopback_here_and_joins_a_cluster_by_its_address():
    local = RayOptions(num_cpus=2)
    env = local.env("/tmp/r")
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and env["RAY_TMPDIR"] == "/tmp/r"
    assert "RAY_ADDRESS" not in env and env["RAY_USAGE_STATS_ENABLED"] == "0"
    args = local.simulation_config(4)
    assert args[args.index("--num-supernodes") + 1] == "4"
    assert args[args.index("--init-args-num-cpus") + 1] == "2"
    assert args[args.index("--client-resources-num-cpus") + 1] == "1"

    cluster = RayOptions(cpus_per_client=2, address="10.0.0.1:6379")
    env = cluster.env("/tmp/r")
    assert env["RAY_ADDRESS"] == "10.0.0.1:6379" and "RAY_TMPDIR" not in env
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in env  # a cluster's nodes talk over the network
    args = cluster.simulation_config(8)
    assert "--init-args-num-cpus" not in args and args[args.index("--client-resources-num-cpus") + 1] == "2"
    with pytest.raises(ValueError, match="own CPUs"):
        RayOptions(num_cpus=2, address="10.0.0.1:6379")


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedcifar: error: ") and err.count("\n") == 1, err
    return err


def test_simulate_refuses_bad_options_in_one_line_before_starting_anything(tmp_path, capsys):
    base = ["federation", "simulate", "--preset", "smoke", "--out", str(tmp_path / "run"), "--workdir", str(tmp_path)]
    assert "--ray-cpus" in _error(capsys, [*base, "--ray-address", "10.0.0.1:6379", "--ray-cpus", "2"])
    assert "cpus-per-client must be >= 1" in _error(capsys, [*base, "--cpus-per-client", "0"])
    err = _error(capsys, [*base, "--nodes", "3", "--set", "num_clients=5"])
    assert "num_clients=5" in err and "3 SuperNodes" in err
    assert not (tmp_path / STATE_FILE).exists() and not (tmp_path / "shards").exists()


def _watch_sockets(workdir: Path, done: threading.Event, seen: dict) -> None:
    """Collect the listening sockets of the simulation's processes until `done`."""
    while not done.is_set():
        if (workdir / STATE_FILE).exists():
            try:
                sim = Federation.attach(workdir)
            except Exception:  # written while we read it
                time.sleep(0.2)
                continue
            seen["marker"] = sim.state["marker"]
            for pid, address, port in listening_sockets(sim.pids()):
                seen.setdefault("sockets", set()).add((address, port))
                seen.setdefault("names", set()).add(Path(f"/proc/{pid}/comm").read_text().strip() or "?")
        time.sleep(0.5)


@pytest.mark.integration  # a simulation SuperLink and Ray
def test_simulate_writes_a_complete_run_on_loopback_that_equals_the_local_one(tmp_path, cifar, capsys):
    work, out = tmp_path / "work", tmp_path / "sim"
    sets = set_args(FLOWER)
    argv = ["federation", "simulate", "--preset", "paper-cpu", *sets, "--out", str(out), "--workdir", str(work)]
    done, seen = threading.Event(), {}
    watcher = threading.Thread(target=_watch_sockets, args=(work, done, seen), daemon=True)
    watcher.start()
    try:
        code = main([*argv, "--ray-cpus", "2"])
    finally:
        done.set()
        watcher.join()
    output = capsys.readouterr()
    assert code == 0, output.err[-2000:]

    for name in ("config.yaml", "partition.csv", "metrics.csv", "model_global.safetensors", "checkpoint.safetensors"):
        assert (out / name).exists(), name
    frame = pd.read_csv(out / "metrics.csv")
    assert frame["round"].tolist() == [1, 2] and frame["clients_failed"].eq(0).all()
    cfg = build_config("paper-cpu", None, FLOWER)
    for r in (1, 2):  # fedcifar's own (seed, round) draw of 2 of the 4 virtual nodes, not Flower's sampling
        assert sorted(map(int, str(frame["clients"].iloc[r - 1]).split())) == uniform(4, 2, cfg.seed, r)

    # Round 1 through the local backend: the same clients and bit-identical client updates (fp32,
    # one thread per client, in a Ray actor or a worker thread), folded in the same order; the
    # test metrics come from one server process against sharded workers, so they agree to 1e-5.
    local = run_training(
        build_config("paper-cpu", None, {**FLOWER, "rounds": 1}), tmp_path / "local", cifar, progress=False
    )
    assert sorted(str(frame["clients"].iloc[0]).split()) == sorted(str(local["clients"].iloc[0]).split())
    assert frame["train_loss"].iloc[0] == local["train_loss"].iloc[0]
    for col in ("test_loss", "test_acc", "test_top5"):
        assert frame[col].iloc[0] == pytest.approx(local[col].iloc[0], rel=1e-5, abs=1e-6), col

    # Ray's own servers were among the sockets seen, and every one was on loopback.
    assert {"gcs_server", "raylet"} <= seen["names"], seen.get("names")
    assert seen["sockets"] and all(address == "127.0.0.1" for address, _ in seen["sockets"]), seen["sockets"]
    # Nothing is left: no process of the simulation (Ray's included), no Ray directory.
    sim = Federation.attach(work)
    assert not sim.pids()
    assert not Path(sim.state["scratch"]).exists()
