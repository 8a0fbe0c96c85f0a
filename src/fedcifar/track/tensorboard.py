"""TensorBoard event files of a run's per-round numbers, when the ``tensorboard`` extra is installed.

``metrics.csv`` stays the record; these files are a view of it for ``tensorboard --logdir``.
Each numeric, finite column of a round's row becomes a scalar whose tag is the column name
and whose step is the round. Without tensorboard installed nothing is written and nothing
fails. A resumed run opens its writer with ``purge_step`` = the first round it redoes, so
TensorBoard drops the steps a killed run wrote past its last checkpoint instead of showing
them twice.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"  # inside a run directory


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's numeric, finite values (not ``round``, the step): what TensorBoard gets."""
    out = {}
    for key, value in row.items():
        if key == "round" or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class ScalarLog:
    """A SummaryWriter in ``log_dir``, or nothing at all if tensorboard is not importable."""

    def __init__(self, log_dir: str | Path, first_round: int = 1) -> None:
        """Steps from ``first_round`` on are (re)written: TensorBoard hides older files' copies of them."""
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional extra is not installed
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=first_round)

    def add_row(self, row: Mapping[str, Any]) -> None:
        """One round's scalars, flushed at once so a killed run leaves its rounds on disk."""
        if self.writer is None:
            return
        step = int(row["round"])
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
