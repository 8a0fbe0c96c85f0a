"""The engine's knobs for ResNet-20 on this machine, one measurement each, in one run.

Trains one client's worth of random uint8 images (781, the mean paper client) per worker with
fedcifar's own ``train_client`` and evaluates 5,000 images with ``eval_counts``, under each
layout and option, and prints a table (images/s, median of ``--repeats``) and writes JSON.

    python benchmarks/tune_resnet20.py --out tune.json

Each figure is the median of a few repeats measured back to back in this one process; the
machine is shared, so compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable

import torch
from torch import nn

from fedcifar.client.evaluate import eval_counts
from fedcifar.client.train import train_client
from fedcifar.messages import ClientInstructions
from fedcifar.model import build_model
from fedcifar.runtime import Runtime

CLIENT_IMAGES = 781  # 50,000 / 64
EVAL_IMAGES = 5000


def _runtime(workers: int, threads: int, bf16: bool = True, channels_last: bool = True) -> Runtime:
    return Runtime(torch.device("cpu"), torch.bfloat16 if bf16 else None, channels_last, workers, threads)


def _in_threads(jobs: list[Callable[[], object]]) -> float:
    threads = [threading.Thread(target=job) for job in jobs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def train_rate(rt: Runtime, repeats: int, compile_model: bool = False) -> float:
    """Training images/s of ``rt.workers`` clients trained side by side (1 epoch each)."""
    torch.set_num_threads(rt.threads_per_worker)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CLIENT_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (CLIENT_IMAGES,), generator=g)
    models = []
    for _ in range(rt.workers):
        model = rt.prepare(build_model(arch="resnet20"))
        models.append(torch.compile(model) if compile_model else model)
    weights = {k: v.clone() for k, v in build_model(arch="resnet20").state_dict().items()}
    instr = ClientInstructions(seed=1, epochs=1)
    _in_threads([lambda m=m: train_client(m, weights, images, labels, instr, rt) for m in models])  # warm-up
    rates = []
    for _ in range(repeats):
        seconds = _in_threads([lambda m=m: train_client(m, weights, images, labels, instr, rt) for m in models])
        rates.append(rt.workers * CLIENT_IMAGES / seconds)
    return statistics.median(rates)


def eval_rate(rt: Runtime, batch_size: int, repeats: int, fold: bool = True) -> float:
    """Test images/s with ``rt.workers`` shards evaluated side by side."""
    torch.set_num_threads(rt.threads_per_worker)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (EVAL_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (EVAL_IMAGES,), generator=g)
    models = [rt.prepare(build_model(arch="resnet20")) for _ in range(rt.workers)]
    shard = EVAL_IMAGES // rt.workers
    jobs = [
        lambda m=m, i=i: eval_counts(
            m, None, images[i * shard : (i + 1) * shard], labels[i * shard : (i + 1) * shard], rt, batch_size, fold
        )
        for i, m in enumerate(models)
    ]
    _in_threads(jobs)
    return statistics.median(shard * rt.workers / _in_threads(jobs) for _ in range(repeats))


def step_overhead(repeats: int) -> dict[str, float]:
    """Share of a training step (batch 64, one thread) that is not spent inside ATen ops."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    rt = _runtime(1, 1)
    model = rt.prepare(build_model(arch="resnet20"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (64,))

    def step() -> None:
        with rt.autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(repeats * 5):
        step()
    wall = (time.perf_counter() - start) / (repeats * 5)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    op_seconds = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6 / 5
    return {"step_ms": 1e3 * wall, "aten_ms": 1e3 * op_seconds, "outside_ops": max(0.0, 1 - op_seconds / wall)}


def _cpu() -> str:
    from fedcifar.calibrate import cpu_name

    return cpu_name()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tune_resnet20.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    r = args.repeats
    rows: list[tuple[str, str, float]] = []

    def add(kind: str, setting: str, value: float) -> None:
        rows.append((kind, setting, value))
        print(f"{kind:6s} {setting:58s} {value:8.0f} img/s", flush=True)

    add("train", f"{cores} workers x 1 thread, bf16, channels-last (default)", train_rate(_runtime(cores, 1), r))
    add("train", f"1 worker x {cores} threads, bf16, channels-last", train_rate(_runtime(1, cores), r))
    add("train", f"{cores} workers x 1 thread, fp32, channels-last", train_rate(_runtime(cores, 1, bf16=False), r))
    add("train", f"{cores} workers x 1 thread, bf16, NCHW", train_rate(_runtime(cores, 1, channels_last=False), r))
    add("train", "1 worker x 1 thread, bf16, eager", train_rate(_runtime(1, 1), r))
    add("train", "1 worker x 1 thread, fp32, eager", train_rate(_runtime(1, 1, bf16=False), r))
    for bf16 in (True, False):
        name = "bf16" if bf16 else "fp32"
        start = time.perf_counter()
        compiled = train_rate(_runtime(1, 1, bf16=bf16), r, compile_model=True)
        add(
            "train",
            f"1 worker x 1 thread, {name}, torch.compile (warm-up incl. {time.perf_counter() - start:.0f} s)",
            compiled,
        )
    for batch in (100, 250, 500, 1000):
        add("eval", f"{cores} workers x 1 thread, batch {batch}, BN folded", eval_rate(_runtime(cores, 1), batch, r))
    for batch in (100, 250, 1000):
        fp32 = _runtime(cores, 1, bf16=False)
        add("eval", f"{cores} workers x 1 thread, fp32, batch {batch}, BN folded", eval_rate(fp32, batch, r))
    add("eval", f"{cores} workers x 1 thread, batch 250, BN not folded", eval_rate(_runtime(cores, 1), 250, r, False))
    add("eval", f"1 worker x {cores} threads, batch 250, BN folded", eval_rate(_runtime(1, cores), 250, r))
    overhead = step_overhead(r)
    print(
        f"step   batch 64, 1 thread: {overhead['step_ms']:.1f} ms per step, {overhead['aten_ms']:.1f} ms in ATen ops, "
        f"{100 * overhead['outside_ops']:.1f} % outside them (Python, dispatch, autograd bookkeeping)"
    )
    result = {
        "rows": [{"kind": k, "setting": s, "images_per_sec": v} for k, s, v in rows],
        "step": overhead,
        "cores": cores,
        "torch": torch.__version__,
        "cpu": _cpu(),
        "repeats": r,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
