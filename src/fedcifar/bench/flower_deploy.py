"""The benchmark's ``flower-deployment`` part: one workload through LocalBackend, then through a
real Flower Deployment Engine federation on loopback (a SuperLink and N SuperNodes, TLS and
SuperNode authentication on, warm ClientApps, as ``fedcifar federation up`` starts them), in one
child process.

``python -m fedcifar.bench.flower_deploy WORKLOAD OUT [--nodes 2] [--clientapp warm|fresh] [--poll S] [--insecure]``

One SuperNode is one client, so the federation has ``nodes`` clients and trains all of them
every round; each trains a fixed number of steps, chosen so that a round trains as many images
as the shared workload's rounds do on average (the same compute per round as the other rows).
Both backends get the same config and seed (bf16 on the CPU, one thread per client, no
compile), so they train the same clients on the same data with the same draws.

Seconds per round are ``round_seconds - eval_seconds`` from each run's ``metrics.csv`` (round
1 is warm-up). Where the Flower round's extra time goes is read from the FlowerBackend's trace
(``FEDCIFAR_FLOWER_TRACE``) and the ClientApp's own timestamps, per fit message:

* ``encode`` / ``push``: the server turns the weights into records and pushes them to the SuperLink;
* ``to_process``: until the node's ClientApp process exists (an idle SuperNode asks the SuperLink
  for messages every 3 s, 0.2 s when warm; its SuperExec asks it for tasks every ``poll`` s, then
  starts a process, or forks one when warm). It can be negative: a node may start while the
  server is still uploading the arrays, and the ClientApp then waits for them in the next stage;
* ``process_start``: from that process's start to the ClientApp handler (Python start-up and
  imports for a fresh process; pulling the task and the message's arrays from the node;
  installing the app);
* ``prepare``: in the handler, before training (shard load and check, decoding, model build);
* ``train``: the client's ``train_client`` (what LocalBackend's worker does, too);
* ``reply``: from the end of training until the reply has landed at the server (encoding, push
  to the node, the node's 0.5 s reply poll (0.2 s warm), push to the SuperLink, the server's
  50 ms poll, pull);
* ``decode``: the server reads the reply back into tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcifar.bench.workload import Workload, measured
from fedcifar.config import Config, build_config

STAGES = ("encode", "push", "to_process", "process_start", "prepare", "train", "reply", "decode")


def deployment_values(w: Workload, nodes: int, mean_images_per_round: float, cores: int) -> dict[str, Any]:
    """Config keys of the deployment workload (on top of the ``paper`` preset)."""
    steps = max(1, round(mean_images_per_round / (nodes * w.batch_size)))
    return {
        "seed": w.seed,
        "num_clients": nodes,
        "clients_per_round": nodes,
        "alpha": w.alpha,
        "min_partition_size": w.min_partition_size,
        "rounds": w.rounds,
        "local_epochs": 1,
        "local_steps": steps,
        "batch_size": w.batch_size,
        "lr": w.lr,
        "eval_every": w.rounds,  # evaluated once, at the end; excluded from seconds per round
        "eval_limit": w.eval_limit,
        "workers": nodes,  # LocalBackend: one thread per client, as each SuperNode's ClientApp
        "threads_per_worker": max(1, cores // nodes),
        "compile": "off",  # a ClientApp never compiles (it lives for one message)
    }


def deployment_config(values: dict[str, Any]) -> Config:
    return build_config("paper", None, dict(values))


def round_walls(frame: pd.DataFrame) -> list[float]:
    """Each round's seconds without its evaluation (the same columns for both backends)."""
    evals = frame["eval_seconds"].fillna(0.0) if "eval_seconds" in frame else 0.0
    return [float(x) for x in (frame["round_seconds"] - evals)]


def stages(line: dict[str, Any]) -> dict[str, float] | None:
    """One fit message's timeline (a trace line) as seconds per stage; None for a failure."""
    m = line.get("metrics") or {}
    if line.get("failure") or "app_start" not in m:
        return None
    train_end = m["app_start"] + m["app_prepare"] + m["seconds"]
    return {
        "encode": line["encode_end"] - line["encode_start"],
        "push": line["push_end"] - line["push_start"],
        "to_process": m["app_process_start"] - line["push_end"],
        "process_start": m["app_start"] - m["app_process_start"],
        "prepare": m["app_prepare"],
        "train": m["seconds"],
        "reply": line["arrived"] - train_end,
        "decode": line["decoded"] - line["arrived"],
    }


def breakdown(trace: list[dict[str, Any]], keep_rounds: set[int]) -> dict[str, Any]:
    """Median seconds per stage over the measured rounds' fit messages, and the messages' spread."""
    rows = [s for line in trace if line["round"] in keep_rounds and (s := stages(line))]
    if not rows:
        return {"messages": 0}
    out: dict[str, Any] = {"messages": len(rows)}
    out["median_seconds"] = {k: statistics.median(r[k] for r in rows) for k in STAGES}
    out["max_seconds"] = {k: max(r[k] for r in rows) for k in STAGES}
    return out


def _poll(clientapp: str, poll: float | None) -> float:
    from fedcifar.flower.warm import TASK_POLL

    return poll if poll is not None else (TASK_POLL if clientapp == "warm" else 1.0)


def _clients(frame: pd.DataFrame) -> list[list[int]]:
    """Each round's clients, sorted (they are listed in arrival order)."""
    return [sorted(int(c) for c in str(cs).split()) for cs in frame["clients"]]


def run_local(cfg: Config, data, run_dir: Path) -> pd.DataFrame:
    from fedcifar.sim.engine import run_training

    return run_training(cfg, run_dir, data, progress=False)


def run_flower(
    cfg_values: dict[str, Any],
    data,
    data_dir: Path,
    work: Path,
    nodes: int,
    clientapp: str,
    poll: float | None,
    tls: bool,
) -> dict[str, Any]:
    """Export the shards, start the federation, run the config through it, stop it."""
    import fedcifar.flower
    from fedcifar.data.shards import export_shards
    from fedcifar.federation import partition_for
    from fedcifar.flower.backend import TRACE_ENV
    from fedcifar.flower.deploy import Federation

    cfg = deployment_config(cfg_values)
    shards = work / "shards"
    export_shards(data.train_x, data.train_y, partition_for(cfg, data.train_y.numpy()), shards)
    trace_file = work / "trace.jsonl"
    out = work / "run"
    t0 = time.perf_counter()
    fed = Federation.up(
        work / "fed",
        nodes,
        tls=tls,
        auth=tls,
        node_config=lambda i: {"partition-id": i, "data-path": str(shards)},
        app_env={TRACE_ENV: str(trace_file)},
        poll_interval=poll,
        clientapp=clientapp,
    )
    up_seconds = time.perf_counter() - t0
    try:
        submitted = time.time()
        config = {
            "preset": "paper",
            "overrides": " ".join(f"{k}={v}" for k, v in cfg_values.items()),
            "out": str(out),
            "data-dir": str(data_dir),
        }
        result = fed.submit(Path(fedcifar.flower.__file__).parent / "app", config, timeout=3600)
        processes = len(fed.pids())
    finally:
        fed.down()
    trace = [json.loads(line) for line in trace_file.read_text().splitlines()]
    first_push = min(line["push_start"] for line in trace)
    return {
        "frame": pd.read_csv(out / "metrics.csv"),
        "trace": trace,
        "up_seconds": up_seconds,
        "run_start_seconds": first_push - submitted,  # flwr run, ServerApp process, data, discovery
        "run_id": result.run_id,
        "processes": processes,
    }


def run(w: Workload, nodes: int, clientapp: str, poll: float | None, tls: bool) -> dict[str, Any]:
    from fedcifar.data.cifar100 import load_cifar100, resolve_data_dir

    t_start = time.perf_counter()
    data = load_cifar100(w.data_dir or None, download=False)
    labels = np.asarray(data.train_y)
    cores = len(os.sched_getaffinity(0))
    values = deployment_values(w, nodes, statistics.mean(w.images_per_round(labels)), cores)
    cfg = deployment_config(values)
    with tempfile.TemporaryDirectory(prefix="fedcifar-bench-deploy-") as tmp:
        local = run_local(cfg, data, Path(tmp) / "local")
        data_dir = resolve_data_dir(w.data_dir or None).resolve()
        flower = run_flower(values, data, data_dir, Path(tmp), nodes, clientapp, poll, tls)
    local_walls, flower_walls = round_walls(local), round_walls(flower["frame"])
    keep = measured(list(range(len(local_walls))))
    local_spr = statistics.median(local_walls[i] for i in keep)
    flower_spr = statistics.median(flower_walls[i] for i in keep)
    same_clients = _clients(local) == _clients(flower["frame"])
    return {
        "impl": "flower-deployment",
        "runtime": f"SuperLink + {nodes} SuperNodes on 127.0.0.1 ({'TLS + SuperNode auth' if tls else 'no TLS'}), "
        f"{clientapp} ClientApp per message, SuperExec poll {_poll(clientapp, poll):g} s",
        "nodes": nodes,
        "clientapp": clientapp,
        "superexec_poll_seconds": _poll(clientapp, poll),
        "tls": tls,
        "config": values,
        "train_images": [int(x) for x in flower["frame"]["train_images"]],
        "local_round_seconds": local_walls,
        "round_seconds": flower_walls,
        "local_fit_seconds": [float(x) for x in local["train_seconds"]],
        "fit_seconds": [float(x) for x in flower["frame"]["train_seconds"]],
        "local_seconds_per_round": local_spr,
        "seconds_per_round": flower_spr,
        "overhead_ratio": flower_spr / local_spr,
        "images_per_sec": sum(flower["frame"]["train_images"].iloc[i] for i in keep)
        / sum(flower_walls[i] for i in keep),
        "same_clients": same_clients,
        "clients_failed": int(flower["frame"]["clients_failed"].sum()),
        "breakdown": breakdown(flower["trace"], {i + 1 for i in keep}),
        "trace": flower["trace"],
        "up_seconds": flower["up_seconds"],
        "run_start_seconds": flower["run_start_seconds"],
        "processes_at_end": flower["processes"],
        "total_seconds": time.perf_counter() - t_start,
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


SECURE_STAGES = ("keys", "shares", "masking", "unmasking")


def run_secure(w: Workload, nodes: int, clientapp: str, poll: float | None, tls: bool) -> dict[str, Any]:
    """The ``flower-secagg`` part: the same config through one federation, plain and with secure aggregation.

    Seconds per round of both (round 1 is warm-up), the secure round's protocol stages (server
    wall seconds; ``masking`` includes the clients' training, ``mask`` is the clients' own masking
    time, training excluded), and the quantisation error: one round from the same start, plain
    and secure, whose float weights differ only by it, against :func:`quantisation_bound`.
    """
    import fedcifar.flower
    from fedcifar.data.cifar100 import load_cifar100, resolve_data_dir
    from fedcifar.data.shards import export_shards
    from fedcifar.federation import partition_for
    from fedcifar.flower.deploy import Federation
    from fedcifar.flower.secagg import quantisation_bound

    t_start = time.perf_counter()
    data = load_cifar100(w.data_dir or None, download=False)
    labels = np.asarray(data.train_y)
    cores = len(os.sched_getaffinity(0))
    values = deployment_values(w, nodes, statistics.mean(w.images_per_round(labels)), cores)
    cfg = deployment_config(values)
    partition = partition_for(cfg, labels)
    data_dir = resolve_data_dir(w.data_dir or None).resolve()
    runs: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory(prefix="fedcifar-bench-secagg-") as tmp:
        work = Path(tmp)
        export_shards(data.train_x, data.train_y, partition, work / "shards")
        fed = Federation.up(
            work / "fed",
            nodes,
            tls=tls,
            auth=tls,
            node_config=lambda i: {"partition-id": i, "data-path": str(work / "shards")},
            poll_interval=poll,
            clientapp=clientapp,
        )
        try:
            for name, extra in (
                ("plain", {}),
                ("secure", {"secure_aggregation": True}),
                ("plain-1", {"rounds": 1}),
                ("secure-1", {"rounds": 1, "secure_aggregation": True}),
            ):
                overrides = " ".join(f"{k}={v}" for k, v in {**values, **extra}.items())
                config = {"preset": "paper", "overrides": overrides, "out": str(work / name), "data-dir": str(data_dir)}
                fed.submit(Path(fedcifar.flower.__file__).parent / "app", config, timeout=3600)
                runs[name] = pd.read_csv(work / name / "metrics.csv")
        finally:
            fed.down()
        from safetensors.torch import load_file

        one = {name: load_file(work / name / "model_global.safetensors") for name in ("plain-1", "secure-1")}
    from fedcifar.model.spec import is_statistic

    def error(statistics: bool) -> float:
        diffs = [
            float((one["secure-1"][k].double() - v.double()).abs().max())
            for k, v in one["plain-1"].items()
            if v.is_floating_point() and is_statistic(k) == statistics
        ]
        return max(diffs, default=0.0)

    sizes = [len(p) for p in partition]
    secure_cfg, weights = cfg.replace(secure_aggregation=True), [n / max(sizes) for n in sizes]
    plain, secure = round_walls(runs["plain"]), round_walls(runs["secure"])
    keep = measured(list(range(len(plain))))
    frame = runs["secure"]
    stage_medians = {k: statistics.median(frame[f"secagg_{k}_seconds"].iloc[i] for i in keep) for k in SECURE_STAGES}
    stage_medians["mask"] = statistics.median(frame["secagg_mask_seconds"].iloc[i] for i in keep)
    plain_spr = statistics.median(plain[i] for i in keep)
    secure_spr = statistics.median(secure[i] for i in keep)
    return {
        "impl": "flower-secagg",
        "runtime": f"SuperLink + {nodes} SuperNodes on 127.0.0.1 ({'TLS + SuperNode auth' if tls else 'no TLS'}), "
        f"{clientapp} ClientApp per message",
        "nodes": nodes,
        "config": values,
        "plain_round_seconds": plain,
        "secure_round_seconds": secure,
        "plain_seconds_per_round": plain_spr,
        "secure_seconds_per_round": secure_spr,
        "secure_ratio": secure_spr / plain_spr,
        "stage_median_seconds": stage_medians,
        "quantisation_error_max": error(False),
        "quantisation_bound": quantisation_bound(secure_cfg, weights),
        "statistics_error_max": error(True),
        "statistics_bound": quantisation_bound(secure_cfg, weights, statistic=True),
        "clipped_coordinates": float(frame["secagg_clipped"].sum()),
        "clients_failed": int(frame["clients_failed"].sum()),
        "total_seconds": time.perf_counter() - t_start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcifar.bench.flower_deploy", description=__doc__.splitlines()[0])
    parser.add_argument("workload")
    parser.add_argument("out")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--clientapp", choices=["fresh", "warm"], default="warm")
    parser.add_argument("--poll", type=float, help="SuperExec task poll interval, s (default: fresh 1, warm 0.1)")
    parser.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication")
    parser.add_argument("--secure", action="store_true", help="plain against secure aggregation (flower-secagg)")
    args = parser.parse_args(argv)
    part = run_secure if args.secure else run
    result = part(Workload.load(args.workload), args.nodes, args.clientapp, args.poll, not args.insecure)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
