"""End to end on real CIFAR-100: the smoke preset, exact resume, and CLI errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fedcifar.cli import main
from fedcifar.config import build_config
from fedcifar.sim.engine import run_training
from fedcifar.track.checkpoint import load_checkpoint

ARTEFACTS = [
    "config.yaml",
    "partition.csv",
    "partition.png",
    "metrics.csv",
    "accuracy.png",
    "loss.png",
    "model_global.safetensors",
    "model_global.pth",
    "checkpoint.safetensors",
    "progress.json",
]
DETERMINISTIC = ["round", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "num_examples", "clients"]


def test_smoke_preset_from_the_console_script_leaves_every_artefact(tmp_path):
    out = tmp_path / "smoke"
    exe = shutil.which("fedcifar", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [exe, "train", "--preset", "smoke", "--out", str(out), "--no-download"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "round   2/2" in proc.stdout  # one-line summary per round
    for name in ARTEFACTS:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp")), "no temp files left behind"

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["round"]) == [1, 2]
    for col in ("train_loss", "train_acc", "test_loss", "test_acc", "test_top5"):
        assert metrics[col].notna().all(), col
    assert metrics[["train_acc", "test_acc", "test_top5"]].stack().between(0, 1).all()
    assert (metrics["test_top5"] >= metrics["test_acc"]).all()
    assert metrics["clients"].map(lambda s: len(str(s).split())).eq(2).all()
    assert metrics["clients_failed"].eq(0).all() and metrics["skipped"].isna().all()
    progress = json.loads((out / "progress.json").read_text())
    assert (progress["round"], progress["clients_done"], progress["clients_total"]) == (2, 2, 2)
    assert progress["images"] == metrics["train_images"].iloc[-1]

    partition = pd.read_csv(out / "partition.csv")
    assert len(partition) == 64 and partition["total"].sum() == 50_000
    assert partition.filter(like="class_").to_numpy().sum() == 50_000

    pth = torch.load(out / "model_global.pth", weights_only=True)
    st = load_file(out / "model_global.safetensors")
    assert pth.keys() == st.keys() and all(torch.equal(pth[k], st[k]) for k in st)
    assert "fc.weight" in st and st["fc.weight"].shape == (100, 512)

    plot = subprocess.run([exe, "plot", str(out)], capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0 and "accuracy.png" in plot.stdout


def _tiny(**over):
    values = dict(rounds=3, clients_per_round=2, local_steps=2, batch_size=32, eval_limit=256, workers=2)
    values.update(over)
    return build_config("paper", None, values)


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("model", ["resnet18", "resnet20"])
def test_interrupted_then_resumed_run_equals_uninterrupted_run(tmp_path, cifar, model):
    cfg = _tiny(model=model)
    full = run_training(cfg, tmp_path / "full", cifar, progress=False)

    def stop_after_two(server_round, row):
        if server_round == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(cfg, tmp_path / "cut", cifar, progress=False, callbacks=(stop_after_two,))
    assert load_checkpoint(tmp_path / "cut").round == 2
    resumed = run_training(cfg, tmp_path / "cut", cifar, resume=True, progress=False)

    pd.testing.assert_frame_equal(full[DETERMINISTIC], resumed[DETERMINISTIC])
    a = load_file(tmp_path / "full" / "model_global.safetensors")
    b = load_file(tmp_path / "cut" / "model_global.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    on_disk = pd.read_csv(tmp_path / "cut" / "metrics.csv")
    assert list(on_disk["round"]) == [1, 2, 3]


def test_rows_written_after_the_last_checkpoint_are_dropped_on_resume(tmp_path, cifar):
    cfg = _tiny(rounds=1)
    run_training(cfg, tmp_path, cifar, progress=False)
    frame = pd.read_csv(tmp_path / "metrics.csv")
    pd.concat([frame, frame.assign(round=2)]).to_csv(tmp_path / "metrics.csv", index=False)
    resumed = run_training(cfg.replace(rounds=2), tmp_path, cifar, resume=True, progress=False)
    assert list(resumed["round"]) == [1, 2]


def test_cli_resume_extends_rounds_and_refuses_other_changes(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "smoke", "--set", "rounds=1", "--set", "eval_limit=100", "--quiet"]
    assert main([*args, "--out", str(run)]) == 0
    assert main([*args, "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--set", "lr=0.1", "--quiet"]) == 2
    assert "only --set rounds=N" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--set", "rounds=2", "--quiet"]) == 0
    assert list(pd.read_csv(run / "metrics.csv")["round"]) == [1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "alpha=0"], "alpha must be > 0"),
        (["--set", "model=resnet50"], "model='resnet50' is not one of: resnet18, resnet20"),
        (["--set", "clients_per_round=100"], "must be <= num_clients"),
        (["--set", "learning_rate=1"], "unknown config key"),
        (["--preset", "giant"], "unknown preset"),
        (["--set", "rounds=many"], "is not an integer"),
        (["--data-dir", "{tmp}/nowhere", "--no-download"], "CIFAR-100 not found or corrupt"),
    ],
)
def test_cli_errors_are_one_line_and_start_no_training(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(["train", *[a.format(tmp=tmp_path) for a in args], "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (out / "metrics.csv").exists()


def test_corrupt_dataset_is_reported_not_raised(tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"not a pickle")
    code = main(["partition", "--out", str(tmp_path / "p"), "--data-dir", str(tmp_path / "data"), "--no-download"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "corrupt" in err and len(err.splitlines()) == 1


def test_partition_command_writes_csv_and_figure(tmp_path, capsys):
    assert main(["partition", "--clients", "64", "--alpha", "0.4", "--seed", "0", "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "partition.csv")
    assert frame.shape == (64, 102) and frame["total"].min() >= 10
    assert (tmp_path / "partition.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["partition", "--alpha", "-1", "--out", str(tmp_path)]) == 2
