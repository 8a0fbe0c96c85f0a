"""The comparison's pure parts: variant parsing and the summary table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fedcifar.compare import markdown_table, parse_variant, parse_variants, seed_spread, summarize, variant_config
from fedcifar.config import ConfigError, build_config


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


def test_summary_reports_final_best_rounds_to_target_and_wall_time():
    frames = {
        "a": pd.DataFrame(
            {
                "round": [1, 2, 3],
                "test_acc": [0.01, 0.06, 0.05],
                "test_loss": [4.6, 4.5, 4.25],
                "round_seconds": [10.0, 11.0, 12.0],
            }
        ),
        "b": pd.DataFrame(
            {"round": [1, 2, 3], "test_acc": [0.01, 0.02, 0.03], "test_loss": [5.0] * 3, "round_seconds": [5.0] * 3}
        ),
    }
    table = summarize(frames, target=0.05)
    a, b = table.iloc[0], table.iloc[1]
    assert (a.final_test_acc, a.best_test_acc, a.best_round, a.rounds_to_target) == (0.05, 0.06, 2, 2)
    assert a.wall_seconds == 33.0 and a.seconds_per_round == 11.0 and a.seconds_to_target == 21.0
    assert math.isnan(b.rounds_to_target) or b.rounds_to_target is None
    text = markdown_table(table, 0.05)
    assert "| rounds to 5.0% | seconds to 5.0% |" in text
    assert "| `a` | 5.00% | 6.00% | 2 | 4.25 | 2 | 21 | 33 | 11.0 |" in text
    assert "| `b` | 3.00% | 3.00% | 3 | 5.00 | not reached | – | 15 | 5.0 |" in text


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
