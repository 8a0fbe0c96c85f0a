"""``fedcifar tune``: grid parsing, selection on validation only, files, reuse of finished points."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from fedcifar.cli import main
from fedcifar.client.evaluate import EvalCounts
from fedcifar.config import ConfigError, build_config
from fedcifar.tune import (
    DEFAULT_VAL_SIZE,
    grid_variants,
    parse_grid,
    run_tune,
    score_point,
    tune_table,
    with_validation,
)
from helpers import set_args, tiny, tiny_config

TUNE = tiny(val_size=100)


def test_grid_specs_are_checked_before_any_training():
    assert parse_grid(["server_lr=0.1, 0.3,1", "tau=0.01"]) == {"server_lr": ["0.1", "0.3", "1"], "tau": ["0.01"]}
    for bad, match in [
        (["nope=1,2"], "unknown config key 'nope'"),
        (["tau="], "empty value"),
        (["tau=0.1,,0.2"], "empty value"),
        (["tau"], "expects KEY=V1,V2"),
        (["tau=1,1"], "repeats"),
        (["tau=1", "tau=2"], "twice"),
        (["seed=0,1"], "not a hyperparameter"),
        (["strategy=fedavg,fedprox"], "not a hyperparameter"),
        ([], "at least one"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_grid(bad)
    base = build_config("smoke")
    with pytest.raises(ConfigError, match="tau must be >= 0"):
        grid_variants(base, "fedadam", parse_grid(["tau=0.1,-1"]))
    with pytest.raises(ConfigError, match="not a number"):
        grid_variants(base, "fedadam", parse_grid(["tau=abc"]))
    with pytest.raises(ConfigError, match="same config"):
        grid_variants(base, "fedadam", parse_grid(["tau=1,1.0"]))
    points = grid_variants(base, "fedadam", parse_grid(["server_lr=0.1,1", "tau=0.01,0.1"]))
    assert [p.label for p in points] == [
        "fedadam:server_lr=0.1,tau=0.01",
        "fedadam:server_lr=0.1,tau=0.1",
        "fedadam:server_lr=1,tau=0.01",
        "fedadam:server_lr=1,tau=0.1",
    ]
    assert with_validation(base)[0].val_size == DEFAULT_VAL_SIZE
    assert with_validation(base.replace(val_size=300))[0].val_size == 300


def test_selection_reads_validation_columns_only():
    """Test accuracy ranks the points the other way round; the selection follows validation."""
    rounds = [1, 2, 3, 4, 5]
    a = pd.DataFrame({"round": rounds, "val_acc": [0.1, 0.5, 0.2, 0.2, 0.2], "val_loss": [4.0] * 5})
    b = pd.DataFrame({"round": rounds, "val_acc": [0.1, 0.1, 0.3, 0.3, 0.3], "val_loss": [3.0] * 5})
    a["test_acc"], b["test_acc"] = 0.9, 0.1
    grid = parse_grid(["tau=0.1,1"])
    variants = grid_variants(build_config("smoke"), "fedadam", grid)
    table = tune_table({variants[0].label: a, variants[1].label: b}, variants, grid)
    # a has the best single round (0.5) but b the best mean of the last 3 evaluations
    assert list(table["selected"]) == [False, True]
    assert score_point(a)["score"] == pytest.approx(0.2) and score_point(a)["best_val_acc"] == 0.5
    assert not [c for c in table.columns if "test" in c]
    tied = tune_table({variants[0].label: b.assign(val_loss=5.0), variants[1].label: b}, variants, grid)
    assert list(tied["selected"]) == [False, True]  # equal scores: the lower validation loss


def _counts(acc: float, n: int = 100) -> EvalCounts:
    hits = round(acc * n)
    return EvalCounts(4.0 * n, hits, hits, n, (1,) * hits + (0,) * (100 - hits), (1,) * 100)


@pytest.fixture
def rigged(monkeypatch):
    """Test accuracy favours server_lr=1, validation accuracy server_lr=0.5 (on real training)."""
    from fedcifar.sim.local import LocalBackend

    monkeypatch.setattr(LocalBackend, "evaluate", lambda self, w: _counts(0.9 if self.cfg.server_lr == 1 else 0.1))
    monkeypatch.setattr(LocalBackend, "validate", lambda self, w: _counts(0.1 if self.cfg.server_lr == 1 else 0.4))


def test_tune_selects_on_validation_writes_its_files_and_reuses_finished_points(
    cifar, tmp_path, rigged, monkeypatch, capsys
):
    base = tiny_config(**TUNE)
    grid = parse_grid(["server_lr=0.5,1"])
    table = run_tune(base, "fedavgm", grid, tmp_path, cifar, progress=False)
    assert table.loc[table["selected"], "point"].tolist() == ["fedavgm:server_lr=0.5"]
    for name in ("tune.csv", "tune.md", "tune.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = pd.read_csv(tmp_path / "tune.csv")
    assert not [c for c in saved.columns if "test" in c]
    assert "test" not in (tmp_path / "tune.md").read_text().split("\n\n")[0]  # the table itself
    assert list(saved["rounds"]) == [2, 2] and list(saved["score"]) == pytest.approx([0.4, 0.1])
    if importlib.util.find_spec("tensorboard"):
        assert {p.name for p in (tmp_path / "tensorboard").iterdir()} == {
            "fedavgm_server_lr=0.5",
            "fedavgm_server_lr=1",
        }

    def no_training(*args, **kwargs):
        raise AssertionError("a finished grid point was trained again")

    monkeypatch.setattr("fedcifar.sim.engine.run_training", no_training)
    args = ["tune", "--preset", "smoke", "--strategy", "fedavgm", "--grid", "server_lr=0.5,1", "--out", str(tmp_path)]
    args += set_args(TUNE)
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "selected fedavgm:server_lr=0.5" in out
    assert "use it with: --set strategy=fedavgm --set server_lr=0.5" in out
    assert main([*args, "--quiet", "--seed", "1"]) == 2  # another config in --out
    assert "holds a run of another config" in capsys.readouterr().err
