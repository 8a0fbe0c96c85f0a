"""Bad resumes, foreign checkpoints and stale compare folders: one line and exit 2, never a traceback."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from fedcifar.cli import main
from fedcifar.config import save_yaml
from fedcifar.federation import model_spec
from fedcifar.track.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint, save_checkpoint
from helpers import set_args, tiny, tiny_config

ONE_ROUND = tiny(rounds=1, eval_limit=100, workers=1)


def _cfg(**over):
    return tiny_config(**{**ONE_ROUND, **over})


def _fake_run(run_dir, cfg, server_round=1, weights=None):
    """A checkpoint as a finished round writes it, without training (initial weights)."""
    weights = weights if weights is not None else model_spec(cfg).build(seed=cfg.seed).state_dict()
    doc = {"config": cfg.to_dict(), "model": model_spec(cfg).to_dict(), "strategy": {}}
    save_checkpoint(run_dir, server_round, weights, {}, doc)
    save_yaml(cfg, run_dir / "config.yaml")


def _one_line_error(capsys, code, *expected):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _write_foreign(path, metadata, tensors=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors or {"w": torch.zeros(3)}, str(path), metadata=metadata)


FOREIGN = {
    "no metadata": (None, "is not a fedcifar checkpoint"),
    "another tool's metadata": ({"format": "pt"}, "is not a fedcifar checkpoint"),
    "metadata not an object": ({"fedcifar": "[]"}, "is not a fedcifar checkpoint"),
    "not JSON": ({"fedcifar": "{oops"}, "metadata is not valid JSON"),
    "another format": ({"fedcifar": json.dumps({"format": 99, "round": 1, "config": {}})}, "of format 99"),
    "no config": ({"fedcifar": json.dumps({"format": 1, "round": 2})}, "'config' and 'strategy' must be JSON"),
    "round not a number": ({"fedcifar": json.dumps({"format": 1, "round": "x", "config": {}})}, "round must be"),
    "round zero": ({"fedcifar": json.dumps({"format": 1, "round": 0, "config": {}})}, "round must be"),
    "no model tensors": ({"fedcifar": json.dumps({"format": 1, "round": 1, "config": {}})}, "holds no model weights"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_foreign_safetensors_file_as_checkpoint_is_one_line(tmp_path, capsys, case):
    metadata, message = FOREIGN[case]
    _write_foreign(tmp_path / "run" / CHECKPOINT_FILE, metadata)
    code = main(["train", "--resume", str(tmp_path / "run"), "--quiet"])
    _one_line_error(capsys, code, message)
    code = main(["centralized", "--resume", "--out", str(tmp_path / "run"), "--quiet"])
    _one_line_error(capsys, code, message)


def test_a_checkpoint_with_a_bad_config_is_one_line(tmp_path, capsys):
    doc = {"format": 1, "round": 1, "config": {"learning_rate": 1}}
    _write_foreign(tmp_path / CHECKPOINT_FILE, {"fedcifar": json.dumps(doc)}, {"model.w": torch.zeros(1)})
    code = main(["train", "--resume", str(tmp_path), "--quiet"])
    _one_line_error(capsys, code, f"{tmp_path / CHECKPOINT_FILE}: ", "unknown config key")


def test_a_checkpoint_of_another_model_is_refused_before_training(tmp_path, capsys):
    cfg = _cfg()
    resnet18 = _cfg(model="resnet18")
    _fake_run(tmp_path, cfg, weights=model_spec(resnet18).build().state_dict())
    code = main(["train", "--resume", str(tmp_path), "--set", "rounds=2", "--quiet"])
    _one_line_error(capsys, code, "does not hold this run's model")

    weights = model_spec(cfg).build().state_dict()
    weights["fc.weight"] = torch.zeros(3, 3)
    _fake_run(tmp_path, cfg, weights=weights)
    code = main(["train", "--resume", str(tmp_path), "--set", "rounds=2", "--quiet"])
    _one_line_error(capsys, code, "fc.weight is torch.float32 (3, 3), expected torch.float32 (100, 64)")


def test_load_checkpoint_raises_only_checkpoint_errors(tmp_path):
    for case, (metadata, _) in FOREIGN.items():
        _write_foreign(tmp_path / case / CHECKPOINT_FILE, metadata)
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / case)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "rounds=abc"], "rounds='abc' is not an integer"),
        (["--set", "rounds=0"], "rounds must be"),
        (["--set", "rounds=2", "--set", "lr=0.1"], "only --set rounds=N or target_epsilon=E may change (got ['lr'])"),
        (["--config", "x.yaml"], "drop --config"),
    ],
)
def test_bad_overrides_on_resume_are_one_line(tmp_path, capsys, args, message):
    _fake_run(tmp_path, _cfg())
    code = main(["train", "--resume", str(tmp_path), *args, "--quiet"])
    _one_line_error(capsys, code, message)


def test_resume_cannot_undo_completed_rounds(tmp_path, capsys):
    _fake_run(tmp_path, _cfg(rounds=3), server_round=3)
    code = main(["train", "--resume", str(tmp_path), "--set", "rounds=2", "--quiet"])
    _one_line_error(capsys, code, "has completed round 3; rounds=2 would undo it")


def test_resume_of_a_missing_or_empty_directory_is_one_line(tmp_path, capsys):
    code = main(["train", "--resume", str(tmp_path / "nowhere"), "--quiet"])
    _one_line_error(capsys, code, "no such run directory")
    assert not (tmp_path / "nowhere").exists()
    code = main(["train", "--resume", str(tmp_path), "--quiet"])
    _one_line_error(capsys, code, "holds no run (no checkpoint.safetensors, no config.yaml)")


def test_auto_resume_refuses_a_run_of_another_config(tmp_path, capsys):
    _fake_run(tmp_path, _cfg())
    argv = ["train", "--preset", "smoke", *set_args(ONE_ROUND), "--out", str(tmp_path)]
    code = main([*argv, "--set", "lr=0.01", "--auto-resume", "--quiet"])
    _one_line_error(capsys, code, "holds a run of another config (lr: 0.001 -> 0.01)")
    code = main([*argv, "--quiet"])
    _one_line_error(capsys, code, "already holds a run; resume it with --resume")


def test_resume_with_no_complete_round_says_so_and_starts_from_round_1(tmp_path, capsys):
    """A run killed in round 1 left config.yaml (and maybe partial files) but no checkpoint."""
    save_yaml(_cfg(), tmp_path / "config.yaml")
    (tmp_path / ".metrics.csv.abcd1234.tmp").write_text("half a row")
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().err.strip() == f"fedcifar: {tmp_path} has no complete round; starting from round 1"
    assert list(pd.read_csv(tmp_path / "metrics.csv")["round"]) == [1]
    assert load_checkpoint(tmp_path).round == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_compare_refuses_a_finished_variant_of_another_config(tmp_path, capsys):
    """An old --out holds fedavg trained with lr=0.001; asking for lr=0.05 must not reuse it."""
    base = _cfg()
    (tmp_path / "fedavg").mkdir()
    _fake_run(tmp_path / "fedavg", base)
    args = ["compare", "--preset", "smoke", *set_args(ONE_ROUND), "--strategies", "fedavg"]
    code = main([*args, "--set", "lr=0.05", "--out", str(tmp_path), "--quiet"])
    _one_line_error(capsys, code, f"{tmp_path / 'fedavg'} holds a run of another config (lr: 0.001 -> 0.05)")
    assert not (tmp_path / "comparison.csv").exists()
