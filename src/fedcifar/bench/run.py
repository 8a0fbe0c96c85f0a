"""``fedcifar bench``: the same federated workload through every implementation, in one run.

Each implementation runs in a child process of its own, so its memory is its own: the
kernel's peak RSS of the child, and the peak PSS summed over the child's whole process tree
(Flower's Ray backend runs many processes), sampled every second. Children run one after
another; nothing here is timed in parallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcifar.atomic import atomic_write_text
from fedcifar.bench.memory import TreeSampler
from fedcifar.bench.report import markdown, summarize
from fedcifar.bench.workload import Workload
from fedcifar.data.cifar100 import DataError, resolve_data_dir

IMPLEMENTATIONS = ("fedcifar", "paper-style", "flower", "flower-deployment")
# tta: time to a test accuracy on paper-cpu, fast default vs fp32; flower-secagg: plain Flower
# rounds against secure aggregation on one loopback federation (at least 3 SuperNodes).
PARTS = (*IMPLEMENTATIONS, "tta", "flower-secagg")
TTA_PRECISIONS = ("auto", "fp32")
QUICK = {"rounds": 3, "clients_per_round": 4, "local_epochs": 1}
# The reference pipelines ship inside the package (installed from a wheel or not): paper_style.py
# and the Flower app flower_app/, both run as scripts in child processes.
PEERS_DIR = Path(__file__).resolve().parent / "peers"


@dataclass(frozen=True)
class BenchOptions:
    workload: Workload
    out_dir: Path
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    scale_clients: tuple[int, ...] = (64, 1000)
    benchmarks_dir: Path = PEERS_DIR  # holds paper_style.py and flower_app/simulate.py
    probe_seconds: float = 2.0
    probe_sizes: tuple[int, ...] = (1024, 2048, 3072, 4096)
    timeout: float = 6 * 3600.0
    tta_target: float = 0.2
    tta_max_rounds: int = 40
    tta_overrides: tuple[str, ...] = ()  # KEY=VALUE on top of paper-cpu (tests shrink the run)
    flower_nodes: int = 2  # flower-deployment: SuperNodes (one client each) on loopback
    flower_clientapp: str = "warm"  # as `fedcifar federation up`; "fresh": Flower's own flwr-clientapp per message
    flower_poll: float | None = None  # SuperExec task poll interval, s (None: fresh 1, Flower's; warm 0.1)
    flower_tls: bool = True  # TLS and SuperNode authentication, as `fedcifar federation up` has them
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)


def describe(w: Workload) -> str:
    return (
        f"ResNet-18, CIFAR-100, {w.clients_per_round} of {w.num_clients} clients per round "
        f"(Dirichlet {w.alpha}), {w.local_epochs} local epoch(s), Adam {w.lr:g}, batch {w.batch_size}, "
        f"{w.rounds} rounds (round 1 is warm-up and not counted when there are more)"
    )


def run_child(cmd: list[str], out_json: Path, log_file: Path, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one measurement in its own session; add its process tree's peak memory."""
    start = time.perf_counter()
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure: keep the record
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        with TreeSampler(proc.pid) as sampler:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _end_session(proc.pid)  # a child that is done may leave helpers (Ray) behind
    seconds = time.perf_counter() - start
    if code != 0 or not out_json.exists():
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        reason = "timed out" if code is None else f"exit code {code}: {tail[0][:200]}"
        return {"error": reason, "log": str(log_file), "wall_seconds": seconds}
    result = json.loads(out_json.read_text())
    result.update(
        peak_rss_tree_mb=sampler.peak.rss_mb,
        peak_pss_tree_mb=sampler.peak.pss_mb,
        processes=sampler.peak.processes,
        wall_seconds=seconds,
        load_average_1min=[load_before, os.getloadavg()[0]],
        log=str(log_file),
    )
    return result


def _end_session(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)


def commands(opts: BenchOptions, workload_file: Path, out: Callable[[str], Path]) -> dict[str, list[str]]:
    py, w = opts.python, str(workload_file)
    cmds = {
        "probe": [
            py,
            "-m",
            "fedcifar.bench.impl",
            "probe",
            w,
            str(out("probe")),
            "--probe-seconds",
            f"{opts.probe_seconds}",
            "--probe-sizes",
            ",".join(map(str, opts.probe_sizes)),
        ],
        "fedcifar": [py, "-m", "fedcifar.bench.impl", "engine", w, str(out("fedcifar"))],
        "paper-style": [py, str(opts.benchmarks_dir / "paper_style.py"), w, str(out("paper-style"))],
        "flower": [py, str(opts.benchmarks_dir / "flower_app" / "simulate.py"), w, str(out("flower"))],
        "flower-deployment": [
            *[py, "-m", "fedcifar.bench.flower_deploy", w, str(out("flower-deployment"))],
            *["--nodes", str(opts.flower_nodes), "--clientapp", opts.flower_clientapp],
            *(["--poll", f"{opts.flower_poll:g}"] if opts.flower_poll is not None else []),
            *([] if opts.flower_tls else ["--insecure"]),
        ],
        "flower-secagg": [
            *[py, "-m", "fedcifar.bench.flower_deploy", w, str(out("flower-secagg")), "--secure"],
            *["--nodes", str(max(3, opts.flower_nodes)), "--clientapp", opts.flower_clientapp],
            *([] if opts.flower_tls else ["--insecure"]),
        ],
    }
    for precision in TTA_PRECISIONS:
        cmds[f"tta-{precision}"] = [
            *[py, "-m", "fedcifar.bench.impl", "tta", w, str(out(f"tta-{precision}")), "--precision", precision],
            *["--target", f"{opts.tta_target}", "--max-rounds", str(opts.tta_max_rounds)],
            *[arg for pair in opts.tta_overrides for arg in ("--set", pair)],
        ]
    for n in opts.scale_clients:
        cmds[f"scale-{n}"] = [py, "-m", "fedcifar.bench.impl", "scale", w, str(out(f"scale-{n}")), "--clients", str(n)]
    return cmds


def assemble(opts: BenchOptions, parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``bench.json``: the workload, the machine, each part's figures and the summary ratios."""
    results = {k: v for k, v in parts.items() if k in IMPLEMENTATIONS}
    probe = parts.get("probe")
    probe = probe if probe and "error" not in probe else None
    bench = {
        "workload": dataclasses.asdict(opts.workload),
        "workload_text": describe(opts.workload),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "results": results,
        "probe": probe,
        "memory_scaling": {str(n): parts[f"scale-{n}"] for n in opts.scale_clients},
        "time_to_accuracy": {p: parts[f"tta-{p}"] for p in TTA_PRECISIONS if f"tta-{p}" in parts},
        "secure_aggregation": parts.get("flower-secagg"),
    }
    bench["summary"] = summarize({k: v for k, v in results.items() if "error" not in v}, probe)
    return bench


def run_bench(opts: BenchOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every part, write ``bench.json`` and ``bench.md`` into ``opts.out_dir``; return the data."""
    out_dir = opts.out_dir
    data_root = resolve_data_dir(opts.workload.data_dir or None)
    if not (data_root / "cifar-100-python").is_dir():  # fail before minutes of child processes
        raise DataError(
            f"CIFAR-100 not found under {data_root}/cifar-100-python; pass --data-dir or set FEDCIFAR_DATA_DIR"
        )
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    workload_file = out_dir / "workload.json"
    opts.workload.save(workload_file)
    env = {**os.environ, **opts.extra_env}

    def out(name: str) -> Path:
        path = out_dir / "logs" / f"{name}.json"
        path.unlink(missing_ok=True)
        return path

    cmds = commands(opts, workload_file, out)
    order = [
        "probe",
        *[i for i in IMPLEMENTATIONS if i in opts.implementations],
        *[f"scale-{n}" for n in opts.scale_clients],
        *([f"tta-{p}" for p in TTA_PRECISIONS] if "tta" in opts.implementations else []),
        *(["flower-secagg"] if "flower-secagg" in opts.implementations else []),
    ]
    if "fedcifar" not in opts.implementations:
        order.remove("probe")
    parts: dict[str, dict[str, Any]] = {}
    for name in order:
        say(f"bench: {name} ...")
        parts[name] = run_child(
            cmds[name], out_dir / "logs" / f"{name}.json", out_dir / "logs" / f"{name}.log", opts.timeout, env
        )
        status = parts[name].get("error") or f"{parts[name]['wall_seconds']:.0f}s"
        say(f"bench: {name} done ({status})")

    bench = assemble(opts, parts)
    atomic_write_text(out_dir / "bench.json", json.dumps(bench, indent=1))
    atomic_write_text(out_dir / "bench.md", markdown(bench))
    return bench
