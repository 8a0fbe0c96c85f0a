"""``fedcifar report``: finished runs side by side on the axis they share, training images.

A federated run's rows are rounds and a centralized run's rows are epochs; both count the
images they trained (``train_images``), so curves and the table are put against cumulative
training images. Each curve carries its per-client band (fairness.py) where the run has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fedcifar.atomic import atomic_path, atomic_write_text  # noqa: E402
from fedcifar.track.metrics import METRICS_FILE, read_metrics  # noqa: E402


def load_runs(run_dirs: list[Path], labels: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """metrics.csv of each run with a ``images_seen`` column (cumulative training images)."""
    labels = labels or [Path(d).name for d in run_dirs]
    frames = {}
    for label, run_dir in zip(labels, run_dirs, strict=True):
        frame = read_metrics(Path(run_dir) / METRICS_FILE)
        frames[label] = frame.assign(images_seen=frame["train_images"].cumsum())
    return frames


def summary_table(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Final and best test accuracy, the final per-client figures, images and wall time per run."""
    rows = []
    for label, frame in frames.items():
        tested = frame.dropna(subset=["test_acc"])
        last, best = tested.iloc[-1], tested.loc[tested["test_acc"].idxmax()]
        rows.append(
            {
                "run": label,
                "rows": len(frame),
                "training_images": int(frame["train_images"].sum()),
                "final_test_acc": float(last["test_acc"]),
                "best_test_acc": float(best["test_acc"]),
                "best_at_images": int(best["images_seen"]),
                "final_train_acc": float(frame["train_acc"].iloc[-1]),
                "final_client_acc_mean": float(last.get("client_acc_mean", float("nan"))),
                "final_client_acc_p10": float(last.get("client_acc_p10", float("nan"))),
                "final_client_acc_min": float(last.get("client_acc_min", float("nan"))),
                "wall_minutes": float(frame["round_seconds"].sum()) / 60,
            }
        )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    header = (
        "| run | rows | training images | final test acc | best test acc (at images) | final train acc | "
        "clients: mean / p10 / min | wall (min) |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        lines.append(
            f"| `{r.run}` | {r.rows} | {r.training_images / 1e6:.2f} M | {r.final_test_acc:.2%} | "
            f"{r.best_test_acc:.2%} ({r.best_at_images / 1e6:.2f} M) | {r.final_train_acc:.2%} | "
            f"{r.final_client_acc_mean:.2%} / {r.final_client_acc_p10:.2%} / {r.final_client_acc_min:.2%} | "
            f"{r.wall_minutes:.1f} |"
        )
    return "\n".join(lines) + "\n"


STYLES = {"test": "-", "train": "--", "client p10": ":"}


def accuracy_figure(frames: Mapping[str, pd.DataFrame], title: str = "") -> plt.Figure:
    """Test accuracy against training images; shaded: per-client mean ± std, dotted: 10th percentile.

    Colour names the run and line style the measure, each in its own legend beside the axes, so
    five runs take eight legend entries outside the curves rather than fifteen on top of them.
    """
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    shown = set()
    for i, (label, frame) in enumerate(frames.items()):
        color = f"C{i}"
        data = frame.dropna(subset=["test_acc"])
        x = data["images_seen"] / 1e6
        ax.plot(x, 100 * data["test_acc"], color=color, linestyle=STYLES["test"], label=label)
        shown.add("test")
        if "train_acc" in data:
            ax.plot(x, 100 * data["train_acc"], color=color, linestyle=STYLES["train"], alpha=0.6)
            shown.add("train")
        if "client_acc_mean" in data and data["client_acc_mean"].notna().any():
            mean, std = 100 * data["client_acc_mean"], 100 * data["client_acc_std"]
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
            ax.plot(x, 100 * data["client_acc_p10"], color=color, linestyle=STYLES["client p10"])
            shown.add("client p10")
    ax.set_xlabel("training images seen (millions)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "Accuracy against training images (band: per-client mean ± std)")
    ax.grid(alpha=0.3)
    beside = {"fontsize": 8, "bbox_transform": ax.transAxes}  # figure legends: not clipped to the axes
    fig.legend(*ax.get_legend_handles_labels(), title="run", loc="upper left", bbox_to_anchor=(1.01, 1.0), **beside)
    keys = [name for name in STYLES if name in shown]
    handles = [plt.Line2D([], [], color="0.3", linestyle=STYLES[name]) for name in keys]
    fig.legend(handles, keys, title="measure", loc="lower left", bbox_to_anchor=(1.01, 0.0), **beside)
    return fig


def plot_runs(frames: Mapping[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    fig = accuracy_figure(frames, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(run_dirs: list[Path], out_dir: Path, labels: list[str] | None = None, title: str = "") -> pd.DataFrame:
    """``report.csv``, ``report.md`` and ``report.png`` for the runs in ``out_dir``."""
    frames = load_runs(run_dirs, labels)
    table = summary_table(frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "report.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out_dir / "report.md", markdown(table))
    plot_runs(frames, out_dir / "report.png", title)
    return table
