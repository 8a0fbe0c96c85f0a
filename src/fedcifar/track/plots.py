"""Figures: train/test accuracy and loss curves, and the partition's class composition."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from fedcifar.atomic import atomic_path  # noqa: E402
from fedcifar.data.partition import skew  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _curve(frame: pd.DataFrame, path: Path, metric: str, ylabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for split, style in (("train", "-o"), ("test", "-s")):
        col = f"{split}_{metric}"
        if col in frame and frame[col].notna().any():
            data = frame[["round", col]].dropna()
            ax.plot(data["round"], data[col], style, markersize=3, label=split)
    if metric == "acc":
        _fairness_band(ax, frame)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def _fairness_band(ax, frame: pd.DataFrame) -> None:
    """Per-client accuracy (fairness.py): a mean ± std band and the 10th percentile."""
    cols = ["round", "client_acc_mean", "client_acc_std", "client_acc_p10"]
    if not set(cols) <= set(frame) or frame["client_acc_mean"].isna().all():
        return
    data = frame[cols].dropna()
    low, high = data["client_acc_mean"] - data["client_acc_std"], data["client_acc_mean"] + data["client_acc_std"]
    ax.fill_between(data["round"], low, high, color="C1", alpha=0.2, linewidth=0, label="clients: mean ± std")
    ax.plot(data["round"], data["client_acc_p10"], ":", color="C1", label="clients: 10th percentile")


def plot_curves(frame: pd.DataFrame, run_dir: str | Path) -> list[Path]:
    """Write ``accuracy.png`` and ``loss.png`` for the rounds in ``frame``."""
    run_dir = Path(run_dir)
    paths = [run_dir / "accuracy.png", run_dir / "loss.png"]
    _curve(frame, paths[0], "acc", "top-1 accuracy", "Accuracy per round")
    _curve(frame, paths[1], "loss", "cross-entropy loss", "Loss per round")
    return paths


MAX_BAR_CLIENTS = 200  # above this, plot_partition draws a raster instead of bars
COMPOSITION_PIXELS = 400


def _stacked_bars(frac: np.ndarray, colors: np.ndarray) -> PolyCollection:
    """Row i, segment c: a rectangle from the cumulative fraction before class c, in one collection.

    One artist instead of clients x classes ``barh`` patches: the same picture, drawn faster.
    """
    right = np.cumsum(frac, axis=1)
    left = right - frac
    top = np.arange(len(frac))[:, None] - 0.5 + np.zeros_like(frac)
    corners = [(left, top), (right, top), (right, top + 1.0), (left, top + 1.0)]
    verts = np.stack([np.stack(c, axis=-1) for c in corners], axis=2).reshape(-1, 4, 2)
    facecolors = np.broadcast_to(colors[None], (*frac.shape, colors.shape[1])).reshape(-1, colors.shape[1])
    return PolyCollection(verts, facecolors=facecolors, linewidths=0, antialiaseds=False)


def plot_partition(counts: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Each client's class composition as a stacked bar, most skewed client first."""
    order = np.argsort(-skew(counts), kind="stable")
    counts = counts[order]
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    num_clients, num_classes = counts.shape
    # Qualitative palettes side by side, so that neighbouring classes get distinct colours.
    palette = np.concatenate([plt.get_cmap(n)(np.arange(20)) for n in ("tab20", "tab20b", "tab20c")])
    colors = palette[np.arange(num_classes) % len(palette)]
    fig, (ax, ax_size) = plt.subplots(
        1,
        2,
        figsize=(10, min(24.0, max(3.0, 0.12 * num_clients + 1.5))),
        gridspec_kw={"width_ratios": [4, 1]},
        sharey=True,
    )
    y = np.arange(num_clients)
    if num_clients <= MAX_BAR_CLIENTS:
        ax.add_collection(_stacked_bars(frac, colors))
    else:  # one raster row per client: bars would be clients x classes artists (memory grows with clients)
        x = (np.arange(COMPOSITION_PIXELS) + 0.5) / COMPOSITION_PIXELS
        cls = np.stack([np.searchsorted(np.cumsum(row), x, side="right") for row in frac]).clip(0, num_classes - 1)
        ax.imshow(colors[cls], aspect="auto", interpolation="nearest", extent=(0, 1, num_clients - 0.5, -0.5))
    ax.set_xlim(0, 1)
    ax.set_ylim(num_clients - 0.5, -0.5)
    ax.set_xlabel("fraction of the client's samples (colour = class)")
    ax.set_ylabel("client (most skewed first)")
    ax.set_yticks(y[:: max(1, num_clients // 16)])
    ax.set_yticklabels(order[:: max(1, num_clients // 16)])
    ax.set_title(title or "Class composition per client")
    ax_size.barh(y, counts.sum(axis=1), color="0.4", height=0.9)
    ax_size.set_xlabel("samples")
    ax_size.set_title("size")
    path = Path(path)
    _save(fig, path)
    return path
