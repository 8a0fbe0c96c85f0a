"""The columns of a round's row in ``metrics.csv``, and its console line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcifar.client.evaluate import EvalCounts
from fedcifar.fairness import client_accuracies, fairness_summary
from fedcifar.messages import ClientFailure, ClientResult


def _weighted(results: Sequence[ClientResult], key: str) -> float:
    total = sum(r.num_examples for r in results)
    if not total:
        return float("nan")
    return sum(r.metrics[key] * r.num_examples for r in results) / total


def train_row(
    server_round: int,
    results: Sequence[ClientResult],
    failures: Sequence[ClientFailure],
    seconds: float,
    skipped: str = "",
) -> dict[str, Any]:
    """Training columns from the results that arrived (metrics only) and the round's failures."""
    images = int(sum(r.metrics.get("images", 0.0) for r in results))
    norms = [r.metrics["update_norm"] for r in results if "update_norm" in r.metrics]
    return {
        "round": server_round,
        "train_loss": _weighted(results, "train_loss"),
        "train_acc": _weighted(results, "train_acc"),
        "num_examples": sum(r.num_examples for r in results),
        "train_images": images,
        "train_seconds": seconds,
        "images_per_sec": images / max(seconds, 1e-9),
        "clients": " ".join(str(r.client_id) for r in results),
        "update_norm": float(np.median(norms)) if norms else float("nan"),  # the median client's
        "clipped": sum(int(r.metrics.get("clipped", 0)) for r in results),
        "clients_failed": len(failures),
        "failures": "; ".join(f"{f.client_id}: {f.reason}" for f in failures),
        "skipped": skipped,
    }


def test_row(counts: EvalCounts, label_counts: np.ndarray) -> dict[str, float]:
    """The round's test columns: loss, top-1, top-5 and the per-client fairness summary."""
    scores = counts.scores()
    row = {"test_loss": scores["loss"], "test_acc": scores["acc"], "test_top5": scores["top5"]}
    row.update(fairness_summary(client_accuracies(label_counts, np.array(counts.class_accuracy()))))
    return row


def val_row(counts: EvalCounts) -> dict[str, float]:
    """The round's validation columns (held-out training images): loss, top-1, top-5."""
    scores = counts.scores()
    return {"val_loss": scores["loss"], "val_acc": scores["acc"], "val_top5": scores["top5"]}


def summary_line(row: dict[str, Any], total_rounds: int) -> str:
    text = f"round {row['round']:>3}/{total_rounds}  train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}"
    if "test_acc" in row:
        text += f"  test loss {row['test_loss']:.3f} acc {row['test_acc']:.3f} top5 {row['test_top5']:.3f}"
    if "val_acc" in row:
        text += f"  val acc {row['val_acc']:.3f}"
    text += f"  {row['round_seconds']:.1f}s  {row['images_per_sec']:.0f} img/s"
    if row.get("clients_failed"):
        text += f"  {row['clients_failed']} failed"
    if row.get("skipped"):
        text += f"  SKIPPED: {row['skipped']}"
    return text
