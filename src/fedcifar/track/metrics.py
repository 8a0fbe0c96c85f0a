"""Per-round metrics kept in a pandas DataFrame and written to ``metrics.csv`` each round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from fedcifar.atomic import atomic_path

METRICS_FILE = "metrics.csv"
PROGRESS_FILE = "progress.json"  # the round in progress: written by track/rundir.py, read by the dashboard


class MetricsLog:
    def __init__(self, run_dir: Path, frame: pd.DataFrame | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.frame = frame if frame is not None else pd.DataFrame()

    @classmethod
    def resume(cls, run_dir: Path, last_round: int) -> MetricsLog:
        """Load rows up to ``last_round``; rows past the last checkpoint are dropped."""
        path = Path(run_dir) / METRICS_FILE
        frame = read_metrics(path) if path.exists() else pd.DataFrame()
        if not frame.empty:
            frame = frame[frame["round"] <= last_round].reset_index(drop=True)
        return cls(run_dir, frame)

    def append(self, row: dict[str, Any]) -> None:
        new = pd.DataFrame([row])
        self.frame = new if self.frame.empty else pd.concat([self.frame, new], ignore_index=True)
        self.write()

    def write(self) -> None:
        with atomic_path(self.path) as tmp:
            self.frame.to_csv(tmp, index=False)


def read_metrics(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)
