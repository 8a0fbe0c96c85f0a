"""The comparison's pure parts: variant parsing and the summary table."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from fedcifar.compare import (
    comparison_figure,
    markdown_table,
    parse_variant,
    parse_variants,
    seed_groups,
    seed_spread,
    summarize,
    variant_config,
)
from fedcifar.config import ConfigError, build_config, effective


def test_variants_parse_names_and_overrides():
    v = parse_variant("fedprox:proximal_mu=0.1, client_weighting=uniform")
    assert v.overrides == {"strategy": "fedprox", "proximal_mu": "0.1", "client_weighting": "uniform"}
    assert v.dirname == "fedprox_proximal_mu=0.1_client_weighting=uniform"
    cfg = variant_config(build_config("smoke"), v)
    assert (cfg.strategy, cfg.proximal_mu, cfg.rounds) == ("fedprox", 0.1, 2)
    assert [x.label for x in parse_variants("fedavg; scaffold fedadam:server_lr=0.001")] == [
        "fedavg",
        "scaffold",
        "fedadam:server_lr=0.001",
    ]
    with pytest.raises(ConfigError, match="repeat"):
        parse_variants(["fedavg", "fedavg"])
    with pytest.raises(ConfigError, match="is not one of"):
        variant_config(build_config("smoke"), parse_variant("fedfoo"))


def test_summary_reports_final_best_p10_rounds_and_seconds_to_each_target_and_wall_time():
    frames = {
        "a": pd.DataFrame(
            {
                "round": [1, 2, 3],
                "test_acc": [0.01, 0.06, 0.05],
                "test_loss": [4.6, 4.5, 4.25],
                "round_seconds": [10.0, 11.0, 12.0],
                "client_acc_p10": [0.0, 0.02, 0.03],
            }
        ),
        "b": pd.DataFrame(
            {"round": [1, 2, 3], "test_acc": [0.01, 0.02, 0.03], "test_loss": [5.0] * 3, "round_seconds": [5.0] * 3}
        ),
    }
    table = summarize(frames, targets=(0.02, 0.05))
    a, b = table.iloc[0], table.iloc[1]
    assert (a.final_test_acc, a.best_test_acc, a.best_round, a.final_client_acc_p10) == (0.05, 0.06, 2, 0.03)
    assert (a["rounds_to_0.02"], a["seconds_to_0.02"], a["rounds_to_0.05"], a["seconds_to_0.05"]) == (2, 21.0, 2, 21.0)
    assert a.wall_seconds == 33.0 and a.seconds_per_round == 11.0
    assert (b["rounds_to_0.02"], b["seconds_to_0.02"]) == (2, 10.0)  # the first round at or above the target
    assert pd.isna(b["rounds_to_0.05"]) and pd.isna(b["seconds_to_0.05"]) and math.isnan(b.final_client_acc_p10)
    text = markdown_table(table, (0.02, 0.05))
    assert "| client p10 | final test loss | rounds to 2% | seconds to 2% | rounds to 5% | seconds to 5% |" in text
    assert "| `a` | 5.00% | 6.00% | 2 | 3.00% | 4.25 | 2 | 21 | 2 | 21 | 33 | 11.0 |" in text
    assert "| `b` | 3.00% | 3.00% | 3 | – | 5.00 | 2 | 10 | not reached | – | 15 | 5.0 |" in text


def test_compare_refuses_a_bad_or_repeated_target_before_any_data_loads(tmp_path, capsys):
    from fedcifar.cli import main

    for flags, reason in (
        (["--target", "30"], "in (0, 1], got 30"),
        (["--target", "0.2", "--target", "0.2"], "repeats"),
    ):
        code = main(
            [
                "compare",
                "--preset",
                "smoke",
                "--data-dir",
                str(tmp_path),
                "--no-download",
                "--out",
                str(tmp_path / "o"),
                *flags,
            ]
        )
        err = capsys.readouterr().err
        assert code != 0 and reason in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_seed_spread_groups_variants_that_differ_only_in_seed():
    variants = parse_variants(["fedavg", "fedavg:seed=1", "fedavg:seed=2", "fedprox"])
    table = pd.DataFrame(
        {
            "variant": ["fedavg", "fedavg:seed=1", "fedavg:seed=2", "fedprox"],
            "final_test_acc": [0.30, 0.32, 0.34, 0.5],
            "best_test_acc": [0.31, 0.33, 0.35, 0.5],
        }
    )
    (line,) = seed_spread(table, variants)
    assert "`fedavg`, `fedavg:seed=1`, `fedavg:seed=2` (3 seeds)" in line
    assert "final test acc 32.00% ± 2.00% (range 4.00%)" in line and "best 33.00% ± 2.00%" in line
    assert seed_spread(table.iloc[[0, 3]], [variants[0], variants[3]]) == []


def test_default_comparison_is_every_strategy_at_its_default_with_fedavg_on_three_seeds():
    from fedcifar.cli import DEFAULT_COMPARE

    base = build_config("compare")
    configs = [variant_config(base, v) for v in parse_variants(list(DEFAULT_COMPARE))]
    assert base.rounds == 50
    assert sorted(c.seed for c in configs if c.replace(seed=base.seed) == base) == [1, 2, 3]
    assert all(c.seed != 0 for c in configs)  # seed 0 is the screens' tuning seed (docs/tuning.md)
    strategies = {c.strategy for c in configs}
    assert {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "scaffold", "feddyn", "fedexp"} <= strategies
    assert any(c.client_weighting == "feddisco" for c in configs)
    assert any(c.fedlc_tau > 0 for c in configs) and any(c.feddecorr_beta > 0 for c in configs)
    recipe = build_config("paper-cpu-plus").replace(rounds=base.rounds, seed=base.seed)
    resolved = [c.replace(server_lr=effective(c, "server_lr")) for c in configs]
    assert recipe in resolved  # the paper-cpu-plus recipe is one of the rows (fedavgm at its defaults)


def test_comparison_plot_draws_a_strategys_seeds_in_one_colour_and_its_legend_beside_the_axes():
    variants = parse_variants(
        ["fedavg", "fedavg:seed=2", "fedavgm", "fedavg:seed=3"] + [f"fedexp:seed={i}" for i in (5, 6)]
    )
    frames = {
        v.label: pd.DataFrame({"round": range(1, 51), "test_acc": [0.01 * r for r in range(1, 51)]}) for v in variants
    }
    fig = comparison_figure(frames, variants=variants)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    color = {label: line.get_color() for label, line in lines.items()}
    assert color["fedavg"] == color["fedavg:seed=2"] == color["fedavg:seed=3"] != color["fedavgm"]
    assert color["fedexp:seed=5"] == color["fedexp:seed=6"] not in (color["fedavg"], color["fedavgm"])
    fedavg_styles = [lines[label].get_linestyle() for label in ("fedavg", "fedavg:seed=2", "fedavg:seed=3")]
    assert len(set(fedavg_styles)) == 3  # the seeds stay apart
    assert lines["fedavg"].get_markevery() == 5  # ten markers on a 50-round curve, not fifty
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 > ax.get_window_extent().x1
    plt.close(fig)


def test_comparison_plot_gives_each_of_the_default_comparisons_strategies_its_own_colour():
    from fedcifar.cli import DEFAULT_COMPARE

    variants = parse_variants(list(DEFAULT_COMPARE))
    frames = {v.label: pd.DataFrame({"round": [1, 2], "test_acc": [0.1, 0.2]}) for v in variants}
    fig = comparison_figure(frames, variants=variants)
    colors = {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in fig.axes[0].get_lines()}
    groups = seed_groups(variants)
    assert len(groups) == len(DEFAULT_COMPARE) - 2  # fedavg's three seeds are one group
    assert len({colors[g[0]] for g in groups}) == len(groups)  # no two strategies share a colour
    plt.close(fig)
