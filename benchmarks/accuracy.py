"""Speed must not cost accuracy: the same short real-data training in fp32 and in the fast default.

For each seed, both runs share the partition, the client schedule, the initial weights and
every client's shuffling and augmentation draws; only the precision knob differs
(``precision=fp32`` against the shipped ``auto``, which is bf16 autocast here). The table
shows final test accuracy per seed, the mean, and the paired difference with its spread.

    flock /tmp/fedcifar-heavy.lock python benchmarks/accuracy.py --out accuracy
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fedcifar.config import build_config
from fedcifar.data.cifar100 import load_cifar100
from fedcifar.sim.engine import run_training

SHORT = {
    "partitioner": "iid",  # learns fastest in few rounds, so accuracy is well above chance
    "rounds": 3,
    "clients_per_round": 4,
    "local_steps": 12,
    "eval_every": 3,  # evaluate once, at the end, on all 10,000 test images
}


def run_pair(seed: int, out: Path, data) -> dict:
    row: dict = {"seed": seed}
    for name, precision in (("fp32", "fp32"), ("fast", "auto")):
        cfg = build_config("paper", None, {**SHORT, "seed": seed, "precision": precision})
        frame = run_training(cfg, out / f"seed{seed}-{name}", data, progress=False)
        last = frame.iloc[-1]
        row[f"{name}_acc"] = float(last["test_acc"])
        row[f"{name}_top5"] = float(last["test_top5"])
        row[f"{name}_images_per_sec"] = float(frame["train_images"].sum() / frame["train_seconds"].sum())
        print(f"seed {seed} {name}: acc {row[f'{name}_acc']:.4f} top5 {row[f'{name}_top5']:.4f}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| seed | fp32 top-1 | fast top-1 | fp32 top-5 | fast top-5 | fp32 img/s | fast img/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['fp32_acc']:.2%} | {r['fast_acc']:.2%} | {r['fp32_top5']:.2%} | "
            f"{r['fast_top5']:.2%} | {r['fp32_images_per_sec']:.0f} | {r['fast_images_per_sec']:.0f} |"
        )

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    lines.append(
        f"| mean | {mean('fp32_acc'):.2%} | {mean('fast_acc'):.2%} | {mean('fp32_top5'):.2%} | "
        f"{mean('fast_top5'):.2%} | {mean('fp32_images_per_sec'):.0f} | {mean('fast_images_per_sec'):.0f} |"
    )
    diffs = [r["fast_acc"] - r["fp32_acc"] for r in rows]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    seeds = [r["fp32_acc"] for r in rows]
    seed_sd = statistics.stdev(seeds) if len(seeds) > 1 else float("nan")
    lines += [
        "",
        f"Paired difference fast - fp32, top-1: {statistics.mean(diffs):+.2%} (sd {spread:.2%} over seeds); "
        f"seed-to-seed sd of fp32 top-1: {seed_sd:.2%}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="accuracy")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_cifar100(download=False)
    rows = [run_pair(int(s), out, data) for s in args.seeds.split(",")]
    text = table(rows)
    (out / "accuracy.json").write_text(json.dumps({"config": SHORT, "rows": rows}, indent=1))
    (out / "accuracy.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
