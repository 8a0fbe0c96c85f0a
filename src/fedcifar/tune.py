"""``fedcifar tune``: a grid of one strategy's hyperparameters, chosen on held-out training images.

Every grid point is a :class:`~fedcifar.compare.Variant` of one base config, trained by
:func:`~fedcifar.compare.run_variants` into ``OUT/<point>/`` (finished points are read back,
interrupted ones resumed; a directory of another config is an error). The base config holds
out ``val_size`` training images before the partition (no client trains on them); a base
with ``val_size=0`` gets :data:`DEFAULT_VAL_SIZE`. The selection reads the ``val_*`` columns
only: the test set never enters it, and no test column is in the tune table.

Score: the mean validation top-1 accuracy of the last :data:`SCORE_ROUNDS` evaluated rounds
(one round's accuracy is noisy). The highest score wins; a tie goes to the lower final
validation loss, then to the first point in grid order. Outputs: ``tune.csv``, ``tune.md`` and ``tune.png`` (validation accuracy per round).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import pandas as pd

from fedcifar.atomic import atomic_path, atomic_write_text
from fedcifar.compare import Variant, plot_comparison, run_variants, variant_config
from fedcifar.config import Config, ConfigError

# 10 % of CIFAR-100's 50,000 training images, 50 a class: the usual size of a held-out split
# (e.g. the 45k/5k split of CIFAR in He et al. 2016, section 4.2).
DEFAULT_VAL_SIZE = 5000
SCORE_ROUNDS = 3
# Not tunable by --grid: the strategy is --strategy; a grid over seeds or over the validation
# split would pick a lucky draw, not a hyperparameter.
NOT_GRID = ("strategy", "seed", "val_size")
TABLE_COLUMNS = {
    "final_val_acc": "final val acc",
    "best_val_acc": "best val acc",
    "best_round": "best round",
    "score": f"score (mean val acc, last {SCORE_ROUNDS} evals)",
    "final_val_loss": "final val loss",
    "rounds": "rounds",
    "wall_seconds": "wall time (s)",
}


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["server_lr=0.1,0.3", "tau=0.01"]`` -> ``{"server_lr": ["0.1", "0.3"], "tau": ["0.01"]}``."""
    known = {f.name for f in fields(Config)}
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, rest = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid expects KEY=V1,V2,..., got {spec!r}")
        if key not in known:
            raise ConfigError(f"--grid {spec!r}: unknown config key {key!r}")
        if key in NOT_GRID:
            raise ConfigError(f"--grid {key}: not a hyperparameter to tune (use --strategy / --seed / --set)")
        if key in grid:
            raise ConfigError(f"--grid {key} given twice; list its values once, comma-separated")
        values = [v.strip() for v in rest.split(",")]
        if any(not v for v in values):
            raise ConfigError(f"--grid {spec!r}: empty value (expected KEY=V1,V2,...)")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {spec!r}: a value repeats")
        grid[key] = values
    if not grid:
        raise ConfigError("tune needs at least one --grid KEY=V1,V2,...")
    return grid


def with_validation(base: Config) -> tuple[Config, str]:
    """``base`` with a validation split, and a note if it had to get the default one."""
    if base.val_size:
        return base, ""
    note = f"tune: holding out val_size={DEFAULT_VAL_SIZE} training images for validation (the config had 0)"
    return base.replace(val_size=DEFAULT_VAL_SIZE), note


def grid_variants(base: Config, strategy: str, grid: Mapping[str, Sequence[str]]) -> list[Variant]:
    """One variant per point of the Cartesian product, each config built and validated now."""
    keys = list(grid)
    variants = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        label = f"{strategy}:" + ",".join(f"{k}={v}" for k, v in point.items())
        variants.append(Variant(label, {"strategy": strategy, **point}))
    seen: dict[tuple, str] = {}
    for v in variants:
        try:
            key = tuple(sorted(variant_config(base, v).to_dict().items()))
        except ConfigError as exc:
            raise ConfigError(f"--grid point {v.label!r}: {exc}") from None
        if key in seen:
            raise ConfigError(f"--grid points {seen[key]!r} and {v.label!r} are the same config")
        seen[key] = v.label
    return variants


def score_point(frame: pd.DataFrame) -> dict[str, float | int | None]:
    """A point's validation summary (val_* columns only) and its selection score."""
    evaluated = frame.dropna(subset=["val_acc"]) if "val_acc" in frame else frame.iloc[:0]
    if not len(evaluated):
        raise ConfigError("a tune run has no val_acc column: it was trained without val_size")
    best = evaluated.loc[evaluated["val_acc"].idxmax()]
    return {
        "final_val_acc": float(evaluated["val_acc"].iloc[-1]),
        "best_val_acc": float(best["val_acc"]),
        "best_round": int(best["round"]),
        "score": float(evaluated["val_acc"].iloc[-SCORE_ROUNDS:].mean()),
        "final_val_loss": float(evaluated["val_loss"].iloc[-1]),
        "rounds": int(frame["round"].max()),
        "wall_seconds": float(frame["round_seconds"].sum()) if "round_seconds" in frame else float("nan"),
    }


def tune_table(frames: Mapping[str, pd.DataFrame], variants: Sequence[Variant], grid: Mapping) -> pd.DataFrame:
    """One row per grid point: its values, validation summary and score; ``selected`` marks the best."""
    rows = []
    for v in variants:
        rows.append({"point": v.label, **{k: v.overrides[k] for k in grid}, **score_point(frames[v.label])})
    table = pd.DataFrame(rows)
    table["selected"] = False
    # Highest score; among equal scores the lowest final validation loss, then grid order.
    best = table.sort_values(["score", "final_val_loss"], ascending=[False, True], kind="stable").index[0]
    table.loc[best, "selected"] = True
    return table


def markdown_table(table: pd.DataFrame, grid: Mapping, val_size: int) -> str:
    keys = list(grid)
    header = ["point", *keys, *TABLE_COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (1 + len(keys)) + ["---:"] * 7) + "|"]
    for row in table.to_dict("records"):
        mark = " **(selected)**" if row["selected"] else ""
        cells = [f"`{row['point']}`{mark}", *(str(row[k]) for k in keys)]
        cells += [f"{row['final_val_acc']:.2%}", f"{row['best_val_acc']:.2%}", str(row["best_round"])]
        cells += [f"{row['score']:.2%}", f"{row['final_val_loss']:.3f}", str(row["rounds"])]
        cells += [f"{row['wall_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\nValidation: {val_size} training images held out before the partition (class-stratified, "
        "from the seed); no client trains on them, and the selection reads no test-set number. The score is "
        f"the mean validation top-1 accuracy of each point's last {SCORE_ROUNDS} evaluated rounds (ties: the "
        "lower final validation loss).\n"
    )
    return "\n".join(lines) + "\n" + note


def set_line(table: pd.DataFrame, strategy: str, grid: Mapping) -> str:
    """The ``--set`` flags that select the chosen point."""
    row = table[table["selected"]].iloc[0]
    return " ".join(f"--set {k}={v}" for k, v in {"strategy": strategy, **{k: row[k] for k in grid}}.items())


def run_tune(
    base: Config,
    strategy: str,
    grid: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    data,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Train (or read back) every grid point into ``out_dir`` and write tune.csv, tune.md, tune.png."""
    if not base.val_size:
        raise ConfigError("tune selects on the validation split: val_size must be > 0")
    out_dir = Path(out_dir)
    variants = grid_variants(base, strategy, grid)
    frames = run_variants(base, variants, out_dir, data, progress=progress, command="tune")
    table = tune_table(frames, variants, grid)
    with atomic_path(out_dir / "tune.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out_dir / "tune.md", markdown_table(table, grid, base.val_size))
    title = f"{strategy} grid, {base.val_size} held-out training images"
    plot_comparison(frames, out_dir / "tune.png", title, column="val_acc")
    return table
