"""What record-level DP-SGD (dp=record) costs one client update, against the plain update.

Trains one paper-sized client (781 random uint8 images, batch 64, 1 epoch) with fedcifar's own
``train_client``, plain and with ``dp_sample_clip`` (torch.func per-image gradients, CSPRNG noise),
under bf16 autocast (if ``--bf16``) and fp32, one thread, and prints a table (seconds, median of
``--repeats``, and the DP/plain ratio) and writes JSON.

    python benchmarks/dpsgd_cost.py --out docs/dpsgd_cost.json

Each figure is the median of repeats measured back to back in this one process; compare rows
of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fedcifar.client.train import train_client
from fedcifar.messages import ClientInstructions
from fedcifar.model import build_model
from fedcifar.runtime import Runtime

CLIENT_IMAGES = 781  # 50,000 / 64


def seconds(runtime: Runtime, repeats: int, **dp) -> float:
    model = build_model(norm="group", seed=0, arch="resnet20").to(memory_format=runtime.memory_format)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CLIENT_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (CLIENT_IMAGES,), generator=g)
    times = []
    for r in range(repeats + 1):  # the first is a warm-up
        instructions = ClientInstructions(seed=r, epochs=1, batch_size=64, **dp)
        t0 = time.perf_counter()
        train_client(model, weights, images, labels, instructions, runtime)
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    """The CPU's model name, and whether it has AMX (bf16 matmuls far above fp32)."""
    info = Path("/proc/cpuinfo").read_text() if platform.system() == "Linux" else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return f"{name or platform.machine()}{' (AMX)' if 'amx_bf16' in info else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="dpsgd_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
        runtime = Runtime(torch.device("cpu"), dtype, True, 1, 1)
        plain = seconds(runtime, args.repeats)
        private = seconds(runtime, args.repeats, dp_sample_clip=1.0, dp_sample_noise=1.0)
        seeded = seconds(runtime, args.repeats, dp_sample_clip=1.0, dp_sample_noise=1.0, dp_seed=1)
        rows.append(
            dict(precision=name, plain_s=plain, dpsgd_s=private, dpsgd_seeded_noise_s=seeded, ratio=private / plain)
        )
        print(
            f"{name}: plain {plain:.2f} s, DP-SGD {private:.2f} s (x{private / plain:.2f}), "
            f"DP-SGD with seeded noise {seeded:.2f} s  (one epoch of {CLIENT_IMAGES} images, 1 thread)"
        )
    with open(args.out, "w") as f:
        json.dump({"machine": machine(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
