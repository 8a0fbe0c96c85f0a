"""The benchmark's fedcifar side, each part run in a child process of its own.

* ``engine``: fedcifar's round loop with its shipped defaults on the shared workload.
* ``probe``: FLOPs per training image and the peak matmul FLOP/s in the training layout.
* ``scale``: one short round with N clients, to show memory does not grow with N.
* ``tta``: time to a test accuracy on the ``paper-cpu`` federation, at a given precision.

Each writes one JSON file; ``python -m fedcifar.bench.impl KIND WORKLOAD OUT [--clients N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedcifar.bench.memory import own_peak_rss_mb
from fedcifar.bench.workload import Workload, measured
from fedcifar.config import Config, build_config


def engine_config(w: Workload, **overrides: Any) -> Config:
    """The workload as a fedcifar config; execution knobs keep their shipped defaults."""
    values = dict(
        seed=w.seed,
        num_clients=w.num_clients,
        alpha=w.alpha,
        min_partition_size=w.min_partition_size,
        rounds=w.rounds,
        clients_per_round=w.clients_per_round,
        local_epochs=w.local_epochs,
        local_steps=w.local_steps,
        batch_size=w.batch_size,
        lr=w.lr,
        eval_every=w.rounds,  # the engine always evaluates the last round; timed apart
        eval_limit=w.eval_limit,
    )
    values.update(overrides)
    return build_config("paper", None, values)


def run_engine(w: Workload, **overrides: Any) -> dict[str, Any]:
    from fedcifar.calibrate import resolve_runtime as calibrated_runtime
    from fedcifar.data.cifar100 import load_cifar100
    from fedcifar.sim.engine import run_training

    t_start = time.perf_counter()
    cfg = engine_config(w, **overrides)
    data = load_cifar100(w.data_dir or None, download=False)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedcifar-bench-") as run_dir:
        run_training(cfg, run_dir, data, progress=False, callbacks=(lambda _r, row: rows.append(dict(row)),))
    # A round's wall time without evaluation: training + aggregation + every write.
    walls = [r["round_seconds"] - r.get("eval_seconds", 0.0) + r["bookkeeping_seconds"] for r in rows]
    overheads = [r["overhead_seconds"] + r["bookkeeping_seconds"] for r in rows]
    keep = measured(list(range(len(rows))))
    images = sum(rows[i]["train_images"] for i in keep)
    runtime = calibrated_runtime(cfg)
    return {
        "impl": "fedcifar",
        "runtime": runtime.describe(),
        "precision": "bf16" if runtime.amp_dtype is not None else "fp32",
        "workers": runtime.workers,
        "threads_per_worker": runtime.threads_per_worker,
        "round_seconds": walls,
        "train_images": [r["train_images"] for r in rows],
        "seconds_per_round": statistics.median(walls[i] for i in keep),
        "images_per_sec": images / sum(walls[i] for i in keep),  # per wall second, as for the others
        "fit_images_per_sec": images / sum(rows[i]["train_seconds"] for i in keep),  # clients + aggregation only
        "overhead_seconds": overheads,
        "overhead_fraction": sum(overheads[i] for i in keep) / sum(walls[i] for i in keep),
        "eval_seconds": [r.get("eval_seconds") for r in rows],
        "total_seconds": time.perf_counter() - t_start,
        "peak_rss_self_mb": own_peak_rss_mb(),
    }


def run_probe(w: Workload, seconds: float = 2.0, sizes: tuple[int, ...] = (1024, 2048, 3072, 4096)) -> dict[str, Any]:
    from fedcifar.bench.probes import peak_matmul, training_flops_per_image
    from fedcifar.model.resnet import build_model
    from fedcifar.runtime import resolve_runtime

    runtime = resolve_runtime(engine_config(w))
    runtime.apply_global_settings()
    flops = training_flops_per_image(build_model(), runtime, w.batch_size)
    out: dict[str, Any] = {"impl": "probe", "flops_per_image": flops, "runtime": runtime.describe()}
    for dtype in (torch.bfloat16, torch.float32):
        peak = peak_matmul(dtype, runtime.workers, runtime.threads_per_worker, sizes, seconds, runtime.device)
        out[f"peak_matmul_{peak.dtype}"] = peak.flops_per_sec
        out[f"peak_matmul_{peak.dtype}_by_size"] = peak.by_size
    out["peak_rss_self_mb"] = own_peak_rss_mb()
    return out


def run_scale(w: Workload, clients: int, steps: int = 2) -> dict[str, Any]:
    """One round of ``clients_per_round`` clients with ``clients`` in the federation."""
    one = Workload(**{**w.__dict__, "rounds": 1, "num_clients": clients})
    result = run_engine(one, local_steps=steps, eval_limit=256)
    return {
        "impl": f"fedcifar-{clients}-clients",
        "num_clients": clients,
        "peak_rss_self_mb": result["peak_rss_self_mb"],
        "overhead_seconds": result["overhead_seconds"][0],
        "round_seconds": result["round_seconds"][0],
    }


class _Reached(Exception):
    """Raised from the round callback to end a time-to-accuracy run at its target."""


def run_time_to_accuracy(
    w: Workload, precision: str, target: float, max_rounds: int, **overrides: Any
) -> dict[str, Any]:
    """Rounds and wall seconds until the global model reaches ``target`` test accuracy.

    The federation is the ``paper-cpu`` preset (ResNet-20, the paper's 64 Dirichlet(0.4)
    clients, 16 per round, 2 epochs, full test set every round) with the workload's seed;
    only ``precision`` differs between the runs compared, so a faster engine that learns
    worse shows up as more rounds. Seconds count from the start of training (model, partition,
    workers) to the end of the round that reached the target, writes included.
    """
    from fedcifar.calibrate import resolve_runtime as calibrated_runtime
    from fedcifar.data.cifar100 import load_cifar100
    from fedcifar.sim.engine import run_training

    cfg = build_config("paper-cpu", None, {"seed": w.seed, "rounds": max_rounds, "precision": precision, **overrides})
    data = load_cifar100(w.data_dir or None, download=False)
    rows: list[dict[str, Any]] = []

    def stop_at_target(_round: int, row: dict[str, Any]) -> None:
        rows.append(dict(row))
        if row.get("test_acc", 0.0) >= target:
            raise _Reached

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedcifar-tta-") as run_dir, contextlib.suppress(_Reached):
        run_training(cfg, run_dir, data, progress=False, callbacks=(stop_at_target,))
    seconds = time.perf_counter() - start
    reached = bool(rows) and rows[-1].get("test_acc", 0.0) >= target
    return {
        "impl": f"tta-{precision}",
        "runtime": calibrated_runtime(cfg).describe(),
        "target": target,
        "reached": reached,
        "rounds": len(rows) if reached else None,
        "seconds": seconds if reached else None,
        "rounds_run": len(rows),
        "seconds_run": seconds,
        "test_acc": [r.get("test_acc") for r in rows],
        "round_seconds": [r["round_seconds"] for r in rows],
        "images_per_sec": sum(r["train_images"] for r in rows) / max(sum(r["train_seconds"] for r in rows), 1e-9),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcifar.bench.impl")
    parser.add_argument("kind", choices=["engine", "probe", "scale", "tta"])
    parser.add_argument("workload")
    parser.add_argument("out")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--probe-seconds", type=float, default=2.0)
    parser.add_argument("--probe-sizes", default="1024,2048,3072,4096")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--target", type=float, default=0.2)
    parser.add_argument("--max-rounds", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tta: config overrides")
    args = parser.parse_args(argv)
    w = Workload.load(args.workload)
    if args.kind == "engine":
        result = run_engine(w)
    elif args.kind == "tta":
        overrides = dict(pair.split("=", 1) for pair in args.set)
        result = run_time_to_accuracy(w, args.precision, args.target, args.max_rounds, **overrides)
    elif args.kind == "probe":
        result = run_probe(w, args.probe_seconds, tuple(int(n) for n in args.probe_sizes.split(",")))
    else:
        result = run_scale(w, args.clients)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
