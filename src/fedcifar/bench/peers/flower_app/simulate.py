"""Run flowerbench in Flower's simulation engine (Ray backend) and time its rounds.

``python src/fedcifar/bench/peers/flower_app/simulate.py WORKLOAD.json OUT.json``. Each Ray actor gets one
CPU (so two clients train side by side on two cores, Flower's best layout here; torch in
an actor then uses one thread, as Ray sets OMP_NUM_THREADS to the actor's CPUs).
``flwr run src/fedcifar/bench/peers/flower_app`` runs the same app through Flower's CLI instead.
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

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:  # one linear script, kept whole so it reads like Flower's examples
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload")
    parser.add_argument("out")
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    args = parser.parse_args(argv)

    # Ray's workers inherit the driver's environment: make the app importable there too.
    sys.path.insert(0, str(HERE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ticks_file = Path(tempfile.mkstemp(prefix="flowerbench-", suffix=".json")[1])
    os.environ["FLOWERBENCH_WORKLOAD"] = str(Path(args.workload).resolve())
    os.environ["FLOWERBENCH_TICKS"] = str(ticks_file)

    import numpy as np

    try:
        from flowerbench.client_app import app as client_app
        from flowerbench.server_app import app as server_app
        from flwr.simulation import run_simulation
    except ImportError as exc:
        raise SystemExit(f"flowerbench: {exc}; is Flower installed? pip install -e '.[flower]'") from None

    from fedcifar.bench.workload import Workload, measured
    from fedcifar.data.cifar100 import load_cifar100

    w = Workload.load(args.workload)
    cores = len(os.sched_getaffinity(0))
    t_start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=w.clients_per_round,
        backend_config={
            "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "include_dashboard": False},
        },
    )
    total = time.perf_counter() - t_start
    ticks = json.loads(ticks_file.read_text())["ticks"]
    ticks_file.unlink()
    walls = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    if len(walls) != w.rounds:
        raise SystemExit(f"flowerbench: expected {w.rounds} timed rounds, got {len(walls)}")
    labels = np.asarray(load_cifar100(w.data_dir or None, download=False).train_y)
    images = w.images_per_round(labels)
    keep = measured(list(range(len(walls))))
    result = {
        "impl": "flower",
        "runtime": f"Flower simulation (Ray), {cores // args.cpus_per_client:.0f} actor(s) x "
        f"{args.cpus_per_client:g} CPU, fp32",
        "precision": "fp32",
        "round_seconds": walls,
        "train_images": images,
        "seconds_per_round": statistics.median(walls[i] for i in keep),
        "images_per_sec": sum(images[i] for i in keep) / sum(walls[i] for i in keep),
        "total_seconds": total,
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
