"""``make run`` picks the paper's run that fits the device, and says which, without training."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fedcifar.cli import build_parser, main
from fedcifar.serve.cli import resolve_train_preset, training_target

ROOT = Path(__file__).resolve().parents[1]


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_auto_without_cuda_trains_paper_cpu_into_its_own_run_dir(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    preset, run_dir = training_target(serve_args("--train-preset", "auto"))
    err = capsys.readouterr().err
    assert (preset, run_dir) == ("paper-cpu", Path("runs/paper-cpu"))
    assert err.count("\n") == 1 and err.startswith("fedcifar: no GPU:")
    assert "ResNet-20 (paper-cpu)" in err and "make run PRESET=paper" in err


def test_auto_with_cuda_trains_the_papers_resnet18(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    preset, run_dir = training_target(serve_args("--train-preset", "auto"))
    err = capsys.readouterr().err
    assert (preset, run_dir) == ("paper", Path("runs/paper"))
    assert err.count("\n") == 1 and "ResNet-18 (paper)" in err


def test_a_named_preset_is_kept_and_says_nothing(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_train_preset("paper") == ("paper", None)
    assert training_target(serve_args("--run", "mine", "--train-preset", "smoke")) == ("smoke", Path("mine"))
    assert capsys.readouterr().err == ""


def test_serve_needs_a_run_a_model_or_a_preset(capsys):
    assert main(["serve"]) == 2
    assert "serve needs --run RUN_DIR or --model FILE" in capsys.readouterr().err


def test_unknown_preset_lists_auto(capsys):
    assert main(["serve", "--train-preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose one of: auto, paper, paper-cpu" in err


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_defaults_to_auto_and_lets_the_preset_name_the_run_dir():
    def dry_run(*overrides: str) -> str:
        out = subprocess.run(
            ["make", "-n", "-s", "run", *overrides], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return next(line for line in out.splitlines() if " serve " in line)

    default = dry_run()
    assert "--train-preset auto" in default and "--run" not in default
    chosen = dry_run("PRESET=paper", "RUN_DIR=runs/mine")
    assert "--train-preset paper " in chosen and "--run runs/mine" in chosen
