"""What the dashboard shows about a run directory that ``fedcifar train`` is writing.

Everything comes from the files training writes: ``config.yaml`` (total rounds; rewritten
when a run starts or resumes), ``metrics.csv`` (one row per finished round), ``partition.png``
and ``progress.json``. Training rewrites ``progress.json`` atomically at the start of each
round and whenever a client's result or failure arrives: the round in progress, clients done,
failed and sampled, training images so far and the time of the write.

The progress of the running round is exact (clients reported over clients sampled) when
``progress.json`` belongs to it: its round is the one after the last row of ``metrics.csv``
and it was written since that row (or since the run started or resumed, which rewrites
``config.yaml``). Otherwise (runs written before ``progress.json`` existed, a file left from
a finished round or from before a restart, or one that does not parse) the progress is an
estimate: time since the last round finished, over the recent mean round time.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedcifar.fairness import FAIRNESS_COLUMNS
from fedcifar.track.metrics import METRICS_FILE, PROGRESS_FILE

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
    "dp_epsilon",  # differential privacy: epsilon spent after the round (empty without dp)
    *FAIRNESS_COLUMNS,
)
STALLED_FACTOR = 3.0  # nothing new for this many mean round times (+ 60 s): training has probably stopped


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
    key: tuple[int, int, int]  # mtime_ns, size, inode: an atomic replace within one mtime tick still shows
    value: Any


class RunReader:
    """Reads a run directory, re-parsing a file only when it changed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._cache: dict[str, _Cached] = {}

    def _cached(self, name: str, parse) -> Any:
        path = self.run_dir / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        hit = self._cache.get(name)
        if hit is not None and hit.key == key:
            return hit.value
        try:
            value = parse(path)
        except (OSError, ValueError, yaml.YAMLError, csv.Error):
            return hit.value if hit is not None else None  # mid-rename on some filesystems: keep the last good one
        self._cache[name] = _Cached(key, value)
        return value

    def metrics(self) -> dict[str, list[float | None]]:
        """Curve columns of metrics.csv as lists (missing values as None)."""
        return self._cached(METRICS_FILE, _read_curves) or {c: [] for c in CURVE_COLUMNS}

    def config(self) -> dict[str, Any]:
        return self._cached(CONFIG_FILE, lambda p: yaml.safe_load(p.read_text()) or {}) or {}

    def progress(self) -> dict[str, Any] | None:
        """progress.json, validated, with its ``mtime``; None if missing (older runs) or never valid."""
        return self._cached(PROGRESS_FILE, lambda p: {**_read_progress(p), "mtime": p.stat().st_mtime})

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

        # Exact progress only for the round after the last metrics row, and only if written since
        # that row or the (re)start: a file from a finished round or an earlier process is stale.
        live = self.progress()
        if live is not None and (started is None or live["round"] != done + 1 or live["mtime"] < started):
            live = None
        last_activity = max(started, live["time"]) if live is not None and started is not None else started
        idle = now - last_activity if last_activity is not None else None

        state = _run_state(started, total, done, mean_round, idle)
        exact = live if state == "training" else None
        fraction = estimate = None
        if exact is not None:
            fraction = (exact["clients_done"] + exact["clients_failed"]) / exact["clients_total"]
        elif state == "training" and mean_round and elapsed is not None:
            estimate = min(elapsed / mean_round, 0.99)
        return {
            "run_dir": str(self.run_dir),
            "state": state,
            "rounds_done": done,
            "total_rounds": int(total) if total is not None else None,
            "current_round": done + 1 if state == "training" else done,
            "round_elapsed_s": elapsed,
            "idle_s": idle,
            "mean_round_s": mean_round,
            # exact, from progress.json: all None unless it belongs to the running round
            "clients_done": exact["clients_done"] if exact else None,
            "clients_failed": exact["clients_failed"] if exact else None,
            "clients_total": exact["clients_total"] if exact else None,
            "round_images": exact["images"] if exact else None,
            "round_progress": fraction,
            # time-based, only when there is no exact progress
            "round_progress_estimate": estimate,
            "has_partition": (self.run_dir / PARTITION_FILE).exists(),
            "partition_mtime": _mtime(self.run_dir / PARTITION_FILE),
            "metrics": metrics,
        }


def _run_state(started: float | None, total, done: int, mean_round: float | None, idle: float | None) -> str:
    if started is None:
        return "waiting"  # nothing written yet
    if total is not None and done >= int(total):
        return "finished"
    if mean_round is not None and idle is not None and idle > STALLED_FACTOR * mean_round + 60:
        return "stalled"
    return "training"


def _count(data: dict[str, Any], key: str, minimum: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{PROGRESS_FILE}: {key} must be an integer >= {minimum}, not {value!r}")
    return value


def _read_progress(path: Path) -> dict[str, Any]:
    """progress.json as written by the round loop; ValueError if anything is off."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{PROGRESS_FILE} is not an object")
    progress = {
        "round": _count(data, "round", 1),
        "clients_done": _count(data, "clients_done", 0),
        "clients_failed": _count(data, "clients_failed", 0),
        "clients_total": _count(data, "clients_total", 1),
        "images": _count(data, "images", 0) if data.get("images") is not None else None,
    }
    if progress["clients_done"] + progress["clients_failed"] > progress["clients_total"]:
        raise ValueError(f"{PROGRESS_FILE}: more clients reported than sampled")
    stamp = data.get("time")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        raise ValueError(f"{PROGRESS_FILE}: time must be a finite number, not {stamp!r}")
    progress["time"] = float(stamp)
    return progress


def _read_curves(path: Path) -> dict[str, list[float | None]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {col: [_float_or_none(row.get(col)) for row in rows] for col in CURVE_COLUMNS}
