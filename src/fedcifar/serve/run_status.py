"""What the dashboard shows about a run directory that ``fedcifar train`` is writing.

Everything comes from the files training already writes: ``config.yaml`` (total rounds;
rewritten when a run starts or resumes), ``metrics.csv`` (one row per finished round) and
``partition.png``. Training writes no in-round progress, so the progress of the current
round is an estimate: time since the last round finished, over the recent mean round time.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedcifar.fairness import FAIRNESS_COLUMNS
from fedcifar.track.metrics import METRICS_FILE

CONFIG_FILE = "config.yaml"
PARTITION_FILE = "partition.png"
CURVE_COLUMNS = (
    "round",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "test_top5",
    "round_seconds",
    *FAIRNESS_COLUMNS,
)
STALLED_FACTOR = 3.0  # no new round for this many mean round times: training has probably stopped


def _float_or_none(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


@dataclass
class _Cached:
    mtime_ns: int
    value: Any


class RunReader:
    """Reads a run directory, re-parsing a file only when it changed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._cache: dict[str, _Cached] = {}

    def _cached(self, name: str, parse) -> Any:
        path = self.run_dir / name
        try:
            mtime_ns = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        hit = self._cache.get(name)
        if hit is not None and hit.mtime_ns == mtime_ns:
            return hit.value
        try:
            value = parse(path)
        except (OSError, ValueError, yaml.YAMLError, csv.Error):
            return hit.value if hit is not None else None  # mid-rename on some filesystems: keep the last good one
        self._cache[name] = _Cached(mtime_ns, value)
        return value

    def metrics(self) -> dict[str, list[float | None]]:
        """Curve columns of metrics.csv as lists (missing values as None)."""
        return self._cached(METRICS_FILE, _read_curves) or {c: [] for c in CURVE_COLUMNS}

    def config(self) -> dict[str, Any]:
        return self._cached(CONFIG_FILE, lambda p: yaml.safe_load(p.read_text()) or {}) or {}

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The dashboard's JSON: progress, curves and whether the partition figure exists."""
        now = time.time() if now is None else now
        metrics = self.metrics()
        cfg = self.config()
        total = cfg.get("rounds")
        done = int(metrics["round"][-1]) if metrics["round"] else 0
        recent = [s for s in metrics["round_seconds"][-5:] if s is not None]
        mean_round = sum(recent) / len(recent) if recent else None
        started = max(
            filter(None, [_mtime(self.run_dir / METRICS_FILE), _mtime(self.run_dir / CONFIG_FILE)]), default=None
        )
        elapsed = now - started if started is not None else None

        if started is None:
            state = "waiting"  # nothing written yet
        elif total is not None and done >= int(total):
            state = "finished"
        elif mean_round is not None and elapsed is not None and elapsed > STALLED_FACTOR * mean_round + 60:
            state = "stalled"
        else:
            state = "training"
        estimate = None
        if state == "training" and mean_round and elapsed is not None:
            estimate = min(elapsed / mean_round, 0.99)
        return {
            "run_dir": str(self.run_dir),
            "state": state,
            "rounds_done": done,
            "total_rounds": int(total) if total is not None else None,
            "current_round": done + 1 if state == "training" else done,
            "round_elapsed_s": elapsed,
            "mean_round_s": mean_round,
            "round_progress_estimate": estimate,
            "has_partition": (self.run_dir / PARTITION_FILE).exists(),
            "partition_mtime": _mtime(self.run_dir / PARTITION_FILE),
            "metrics": metrics,
        }


def _read_curves(path: Path) -> dict[str, list[float | None]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {col: [_float_or_none(row.get(col)) for row in rows] for col in CURVE_COLUMNS}
