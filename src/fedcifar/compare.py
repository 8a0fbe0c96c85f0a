"""``fedcifar compare``: several strategies on the same partition and seed, one table, one plot.

Each variant is a strategy name with optional config overrides, written
``NAME[:key=value,key=value]`` (``fedprox:proximal_mu=0.1``, ``fedavg:norm=fedbn``). Every
variant trains from the same base config, so the partition, the initial model and each
round's client seeds are the same; only what the variant changes differs. Runs go to
``OUT/<variant>/`` as ordinary run directories; a variant whose directory already holds a
complete run of the same config is read back, and an interrupted one is resumed, so the
command can be re-run. A longer run of the same config counts as complete when its first
rounds do not depend on the horizon (:func:`horizon_dependence`): its first ``rounds`` are
read. A directory holding a run of another config is an error.

Outputs: ``comparison.csv`` and ``comparison.md`` (final and best test accuracy, the clients'
10th-percentile accuracy, rounds and wall seconds to each target accuracy, wall time) and
``comparison.png`` (test accuracy against round).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fedcifar.atomic import atomic_path, atomic_write_text  # noqa: E402
from fedcifar.config import Config, ConfigError, config_from_dict  # noqa: E402

# The table's columns and headers: these, one pair per target accuracy (target_columns), then WALL.
ACCURACY = {
    "variant": "variant",
    "final_test_acc": "final test acc",
    "best_test_acc": "best test acc",
    "best_round": "best round",
    "final_client_acc_p10": "client p10",
    "final_test_loss": "final test loss",
}
WALL = {"wall_seconds": "wall time (s)", "seconds_per_round": "s / round"}


def target_columns(target: float) -> tuple[str, str]:
    """The table's two columns for one target accuracy: rounds and wall seconds to reach it."""
    return f"rounds_to_{target:g}", f"seconds_to_{target:g}"


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: dict[str, str]

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", self.label)


def parse_variant(spec: str) -> Variant:
    """``NAME[:key=value,...]`` -> Variant(label=spec, overrides={"strategy": NAME, ...})."""
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    if not name:
        raise ConfigError(f"compare variant {spec!r} has no strategy name")
    overrides = {"strategy": name.strip()}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"compare variant {spec!r}: expected key=value after ':', got {pair!r}")
        overrides[key.strip()] = value.strip()
    return Variant(spec, overrides)


def parse_variants(text: str | Sequence[str]) -> list[Variant]:
    """Variants separated by spaces or ';' (commas belong to a variant's overrides)."""
    specs = text if not isinstance(text, str) else re.split(r"[;\s]+", text)
    variants = [parse_variant(s) for s in specs if s.strip()]
    if not variants:
        raise ConfigError("compare needs at least one strategy")
    labels = [v.dirname for v in variants]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare variants repeat: {labels}")
    return variants


def variant_config(base: Config, variant: Variant) -> Config:
    """The base config with the variant's overrides, coerced and validated like ``--set``."""
    return config_from_dict({**base.to_dict(), **variant.overrides})


def completed_rounds(run_dir: Path, cfg: Config) -> int:
    """Rounds already in ``run_dir`` (0: none) for a variant of config ``cfg``.

    A run left by another config (an old ``--out``) is refused, not silently reused.
    """
    from fedcifar.track.checkpoint import CHECKPOINT_FILE, load_run
    from fedcifar.track.rundir import config_changes

    if not (run_dir / CHECKPOINT_FILE).exists():
        return 0
    ckpt, saved = load_run(run_dir)
    changed = config_changes(saved, cfg)
    if changed:
        raise ConfigError(f"{run_dir} holds a run of another config ({changed}); remove it or pick another --out")
    if ckpt.round > cfg.rounds and (why := horizon_dependence(saved, cfg.rounds)):
        raise ConfigError(
            f"{run_dir} holds {ckpt.round} rounds, and its first {cfg.rounds} are not a {cfg.rounds}-round run: {why}"
        )
    return ckpt.round


def horizon_dependence(cfg: Config, rounds: int) -> str:
    """Why the first ``rounds`` of a longer run of ``cfg`` differ from a ``rounds``-round run ("" if not).

    Otherwise the longer run's first ``rounds`` are the shorter run, round for round (each
    round's seeds come from (seed, round)), so ``compare`` reads them instead of training again.
    """
    from fedcifar.federation import round_lr

    shorter = cfg.replace(rounds=rounds)
    if any(round_lr(cfg, r) != round_lr(shorter, r) for r in range(1, rounds + 1)):
        return f"lr_schedule={cfg.lr_schedule} sets each round's rate from the number of rounds"
    if rounds % cfg.eval_every:
        return f"a {rounds}-round run evaluates its last round, which eval_every={cfg.eval_every} skips"
    return ""


def summarize(frames: dict[str, pd.DataFrame], targets: Sequence[float]) -> pd.DataFrame:
    """One row per variant from its metrics: accuracies, rounds and seconds to each target, wall time.

    Seconds to a target add up ``round_seconds`` (training and evaluation) through the first
    round whose test accuracy reached it; a target never reached is left empty.
    """
    rows = []
    for label, frame in frames.items():
        tested = frame.dropna(subset=["test_acc"]) if "test_acc" in frame else frame.iloc[:0]
        elapsed = frame.set_index("round")["round_seconds"].cumsum() if "round_seconds" in frame else None
        best = tested.loc[tested["test_acc"].idxmax()] if len(tested) else None
        wall = float(frame["round_seconds"].sum()) if "round_seconds" in frame else float("nan")
        p10 = frame["client_acc_p10"].dropna() if "client_acc_p10" in frame else pd.Series(dtype=float)
        row = {
            "variant": label,
            "final_test_acc": float(tested["test_acc"].iloc[-1]) if len(tested) else float("nan"),
            "best_test_acc": float(best["test_acc"]) if best is not None else float("nan"),
            "best_round": int(best["round"]) if best is not None else None,
            "final_client_acc_p10": float(p10.iloc[-1]) if len(p10) else float("nan"),
            "final_test_loss": float(tested["test_loss"].iloc[-1]) if len(tested) else float("nan"),
        }
        for target in targets:
            rounds_col, seconds_col = target_columns(target)
            reached = tested[tested["test_acc"] >= target]
            first = int(reached["round"].iloc[0]) if len(reached) else None
            row[rounds_col] = first
            row[seconds_col] = float(elapsed[first]) if first is not None and elapsed is not None else None
        row |= {"wall_seconds": wall, "seconds_per_round": wall / max(len(frame), 1)}
        rows.append(row)
    columns = [*ACCURACY, *(c for t in targets for c in target_columns(t)), *WALL]
    return pd.DataFrame(rows, columns=columns)


def _missing(value) -> bool:
    return value is None or pd.isna(value)


def markdown_table(table: pd.DataFrame, targets: Sequence[float]) -> str:
    """The summary as a GitHub markdown table (accuracies in percent)."""
    header = [*ACCURACY.values(), *(f"{what} to {100 * t:g}%" for t in targets for what in ("rounds", "seconds"))]
    header += WALL.values()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in table.to_dict("records"):
        cells = [
            f"`{row['variant']}`",
            f"{row['final_test_acc']:.2%}",
            f"{row['best_test_acc']:.2%}",
            "–" if _missing(row["best_round"]) else str(int(row["best_round"])),
            "–" if _missing(row["final_client_acc_p10"]) else f"{row['final_client_acc_p10']:.2%}",
            f"{row['final_test_loss']:.2f}",
        ]
        for target in targets:
            rounds_col, seconds_col = target_columns(target)
            cells.append("not reached" if _missing(row[rounds_col]) else str(int(row[rounds_col])))
            cells.append("–" if _missing(row[seconds_col]) else f"{row[seconds_col]:.0f}")
        cells += [f"{row['wall_seconds']:.0f}", f"{row['seconds_per_round']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_groups(variants: Sequence[Variant]) -> list[list[str]]:
    """The variants' labels grouped by everything but ``seed``, in order of first appearance."""
    groups: dict[tuple, list[str]] = {}
    for v in variants:
        key = tuple(sorted((k, val) for k, val in v.overrides.items() if k != "seed"))
        groups.setdefault(key, []).append(v.label)
    return list(groups.values())


def seed_spread(table: pd.DataFrame, variants: Sequence[Variant]) -> list[str]:
    """One line per group of variants that differ only in ``seed``: the spread of their final accuracy.

    It is the yardstick for the table: a difference between strategies smaller than the
    seed-to-seed spread of one strategy is not a signal.
    """
    lines = []
    for labels in seed_groups(variants):
        if len(labels) < 2:
            continue
        rows = table.set_index("variant").loc[labels]
        final, best = rows["final_test_acc"], rows["best_test_acc"]
        lines.append(
            f"Seed spread of {', '.join(f'`{label}`' for label in labels)} ({len(labels)} seeds): final test acc "
            f"{final.mean():.2%} ± {final.std(ddof=1):.2%} (range {final.max() - final.min():.2%}), "
            f"best {best.mean():.2%} ± {best.std(ddof=1):.2%} (mean ± sample std)."
        )
    return lines


# Matplotlib's ten cycle colours, then five more, so the default 13-variant comparison
# (11 strategies) gives each strategy its own colour; beyond 15 they repeat with another marker.
PALETTE = (*(f"C{i}" for i in range(10)), "black", "gold", "navy", "lime", "darkred")


def comparison_figure(
    frames: dict[str, pd.DataFrame], title: str = "", column: str = "test_acc", variants: Sequence[Variant] = ()
) -> plt.Figure:
    """Accuracy (``column``: test_acc, or val_acc for tune) against round, one line per variant.

    Variants that differ only in ``seed`` (given ``variants``) share a colour and marker and
    differ in line style, so a strategy's seeds read as one spread; the legend sits beside the
    axes, where thirteen entries cover no curve.
    """
    split = "validation" if column.startswith("val") else "test"
    groups = seed_groups(variants) if variants else [[label] for label in frames]
    style = {
        label: (PALETTE[g % len(PALETTE)], "osD^v<>px*h"[g % 11], ("-", "--", ":", "-.")[i % 4])
        for g, labels in enumerate(groups)
        for i, label in enumerate(labels)
    }
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for label, frame in frames.items():
        color, marker, linestyle = style.get(label, (None, "o", "-"))
        data = frame[["round", column]].dropna() if column in frame else frame.iloc[:0]
        ax.plot(
            data["round"],
            100 * data[column],
            color=color,
            marker=marker,
            linestyle=linestyle,
            markersize=3,
            markevery=max(1, len(data) // 10),
            label=label,
        )
    ax.set_xlabel("round")
    ax.set_ylabel(f"{split} top-1 accuracy (%)")
    ax.set_title(title or f"{split.capitalize()} accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_comparison(
    frames: dict[str, pd.DataFrame],
    path: str | Path,
    title: str = "",
    column: str = "test_acc",
    variants: Sequence[Variant] = (),
) -> Path:
    fig = comparison_figure(frames, title, column, variants)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def run_variants(
    base: Config, variants: Sequence[Variant], out_dir: Path, data, *, progress: bool = True, command: str = "compare"
) -> dict[str, pd.DataFrame]:
    """Each variant's metrics: read back if ``out_dir/<variant>/`` is complete, else trained or resumed.

    TensorBoard's copies go to ``out_dir/tensorboard/<variant>/``, so one ``--logdir`` shows them all.
    """
    from fedcifar.sim.engine import run_training
    from fedcifar.track.metrics import METRICS_FILE, read_metrics
    from fedcifar.track.tensorboard import TENSORBOARD_DIR

    configs = {v.label: variant_config(base, v) for v in variants}  # every error before any training
    done = {v.label: completed_rounds(out_dir / v.dirname, configs[v.label]) for v in variants}
    frames: dict[str, pd.DataFrame] = {}
    for variant in variants:
        cfg, run_dir = configs[variant.label], out_dir / variant.dirname
        if done[variant.label] >= cfg.rounds:
            frame = read_metrics(run_dir / METRICS_FILE)
            frames[variant.label] = frame[frame["round"] <= cfg.rounds]
        else:
            if progress:
                print(f"{command}: {variant.label} -> {run_dir}", flush=True)
            frames[variant.label] = run_training(
                cfg,
                run_dir,
                data,
                resume=done[variant.label] > 0,
                progress=progress,
                tensorboard_dir=out_dir / TENSORBOARD_DIR / variant.dirname,
            )
    return frames


def run_comparison(
    base: Config,
    variants: Sequence[Variant],
    out_dir: str | Path,
    data,
    *,
    targets: Sequence[float],
    progress: bool = True,
) -> pd.DataFrame:
    """Train every variant into ``out_dir/<variant>/`` and write the table and the plot."""
    out_dir = Path(out_dir)
    frames = run_variants(base, variants, out_dir, data, progress=progress)
    table = summarize(frames, targets)
    with atomic_path(out_dir / "comparison.csv") as tmp:
        table.to_csv(tmp, index=False)
    spread = seed_spread(table, variants)
    atomic_write_text(
        out_dir / "comparison.md", markdown_table(table, targets) + "".join(f"\n{line}\n" for line in spread)
    )
    plot_comparison(frames, out_dir / "comparison.png", _title(base), variants=variants)
    return table


def _title(cfg: Config) -> str:
    return (
        f"CIFAR-100, {cfg.num_clients} clients Dirichlet({cfg.alpha:g}), {cfg.clients_per_round}/round, "
        f"{cfg.local_steps or cfg.local_epochs} {'steps' if cfg.local_steps else 'epochs'}"
    )
