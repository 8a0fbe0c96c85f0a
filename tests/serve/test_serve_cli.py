"""``fedcifar serve`` start-up errors: one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from safetensors.torch import save_file

from fedcifar.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["serve", *argv])
    return code, capsys.readouterr().err


def test_missing_model_file(tmp_path, capsys):
    code, err = run_cli(capsys, "--model", str(tmp_path / "nope.safetensors"))
    assert code == 2 and err.count("\n") == 1 and "file not found" in err


def test_corrupt_model_file(tmp_path, capsys):
    bad = tmp_path / "model_global.safetensors"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    code, err = run_cli(capsys, "--model", str(bad))
    assert code == 2 and err.count("\n") == 1 and "not a readable safetensors file" in err


def test_model_file_with_the_wrong_tensors(tmp_path, capsys):
    import torch

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other))
    code, err = run_cli(capsys, "--model", str(other))
    assert code == 2 and err.count("\n") == 1 and "does not hold a resnet18 model" in err


def test_missing_label_names(model_file, tmp_path, capsys):
    code, err = run_cli(capsys, "--model", str(model_file), "--data-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "label names not found" in err


def test_port_in_use(model_file, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_cli(capsys, "--model", str(model_file), "--port", str(port))
    assert code == 2 and err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


def test_train_preset_needs_a_run(model_file, capsys):
    code, err = run_cli(capsys, "--model", str(model_file), "--train-preset", "smoke")
    assert code == 2 and "--train-preset needs --run" in err


def test_run_and_model_are_exclusive(model_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--run", str(tmp_path), "--model", str(model_file)])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_real_process_exits_non_zero_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedcifar", "serve", "--model", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("fedcifar: error: file not found")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--reload-interval", "0"),
        ("--reload-interval", "-1"),
        ("--reload-interval", "nan"),
        ("--reload-interval", "inf"),
        ("--batch-wait-ms", "nan"),
        ("--max-upload-mb", "inf"),
        ("--max-upload-mb", "0"),
        ("--max-pixels", "0"),
        ("--decode-workers", "0"),
        ("--decode-queue", "-1"),
    ],
)
def test_bad_numeric_options_are_one_line_errors(model_file, capsys, option, value):
    code, err = run_cli(capsys, "--model", str(model_file), option, value)
    assert code == 2 and err.count("\n") == 1 and option in err, err


def test_unknown_train_preset_is_refused_before_starting(tmp_path, capsys):
    code, err = run_cli(capsys, "--run", str(tmp_path), "--train-preset", "nope")
    assert code == 2 and err.count("\n") == 1 and "unknown --train-preset 'nope'" in err
