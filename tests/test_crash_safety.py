"""Crash-safe runs: durable atomic writes, the run-directory lock, and SIGKILL at random instants.

The kill test runs real ``fedcifar train`` processes on CIFAR-100. They are forked from a
multiprocessing forkserver that has imported fedcifar and loaded the data once
(``tests/crash_forkserver.py``), so a start costs milliseconds, not seconds; each child is an
ordinary process that SIGKILL ends at once.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fedcifar import atomic as io
from fedcifar.cli import main
from fedcifar.track.checkpoint import CHECKPOINT_FILE, MODEL_FILE
from fedcifar.track.lock import LOCK_FILE, RunDirInUse, acquire, release, run_dir_lock
from helpers import set_args, tiny, wait_for

ROUNDS = 3
TINY = ["--preset", "smoke", *set_args(tiny(rounds=ROUNDS, eval_limit=100, workers=1)), "--quiet", "--no-download"]
KILLS = {"any instant": 3, "round 1, before any checkpoint": 3, "during a checkpoint write": 3}
DETERMINISTIC = ["round", "train_loss", "train_acc", "test_loss", "test_acc", "num_examples", "clients"]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.exists() else []


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "metrics.csv"
    io.atomic_write_text(target, "round\n1\n")

    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(".metrics.csv.") and events[0][1].endswith(".tmp")
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_text() == "round\n1\n" and _temps(tmp_path) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_artefacts_are_created_as_open_would_create_them_not_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.atomic_write_text(tmp_path / "config.yaml", "rounds: 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old" and _temps(tmp_path) == []


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    stale = [".checkpoint.safetensors._7c1o1oq.tmp", ".metrics.csv.abcd1234.tmp"]
    kept = ["metrics.csv", ".lock", "notes.tmp", ".x.tmp", "model_global.safetensors"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    removed = io.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


# --- the run-directory lock ------------------------------------------------------------------


def _hold_lock_in_another_process(run_dir: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from fedcifar.track.lock import acquire; "
        "acquire(sys.argv[1]); print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_the_holder_and_is_released_when_it_is_killed(tmp_path):
    holder = _hold_lock_in_another_process(tmp_path)
    try:
        with pytest.raises(RunDirInUse, match=rf"run directory in use \(pid {holder.pid}\)$"):
            acquire(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_dir_lock(tmp_path):  # the kernel dropped the killed holder's lock
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_claims_in_one_process_nest_and_the_first_one_cleans_stale_temps(tmp_path):
    (tmp_path / ".metrics.csv.abcd1234.tmp").write_text("left by a killed writer")
    acquire(tmp_path)
    assert _temps(tmp_path) == []
    with run_dir_lock(tmp_path):  # the engine inside the CLI, RunDir inside the engine
        pass
    code = "import sys; from fedcifar.track.lock import acquire; acquire(sys.argv[1])"
    busy = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert busy.returncode != 0 and "run directory in use" in busy.stderr  # still held: one claim left
    release(tmp_path)
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0


def test_a_second_trainer_on_the_same_run_directory_gets_one_line(tmp_path, capsys):
    holder = _hold_lock_in_another_process(tmp_path / "run")
    try:
        code = main(["train", *TINY, "--out", str(tmp_path / "run")])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"fedcifar: error: {tmp_path / 'run'}: run directory in use (pid {holder.pid})"
    assert not (tmp_path / "run" / "config.yaml").exists()


# --- SIGKILL at 20 instants --------------------------------------------------------------------

_FORKSERVER = multiprocessing.get_context("forkserver")


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    """A ``fedcifar`` process: its output to ``log``, its exit code the CLI's."""
    import crash_forkserver  # noqa: F401  (preloaded: CIFAR-100 is already in memory)

    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.exit(main(argv))


def _start(run_dir: Path, env: dict[str, str] | None = None, auto_resume: bool = False):
    argv = ["train", *TINY, "--out", str(run_dir), *(["--auto-resume"] if auto_resume else [])]
    proc = _FORKSERVER.Process(target=_child, args=(argv, env or {}, str(run_dir.parent / f"{run_dir.name}.log")))
    proc.start()
    return proc


def _join(proc, timeout: float = 300.0) -> None:
    """Wait for a run to end; a run that hangs fails the test instead of blocking it forever."""
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError(f"the run did not end within {timeout:g} s")


def _wait_for(condition, proc, timeout: float = 120.0) -> float:
    """Wait for ``condition`` while the run lives (polled every 5 ms: kill instants are that fine); the time then."""
    wait_for(condition, timeout, "the instant to kill the run", proc=proc, interval=0.005)
    return time.perf_counter()


def _reference(run_dir: Path) -> tuple[float, float]:
    """An uninterrupted run; returns its duration and how long round 1 took (start to first checkpoint)."""
    t0 = time.perf_counter()
    proc = _start(run_dir)
    started = _wait_for(lambda: (run_dir / "config.yaml").exists(), proc)
    first_ckpt = _wait_for(lambda: (run_dir / CHECKPOINT_FILE).exists(), proc)
    _join(proc)
    assert proc.exitcode == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-2000:]
    return time.perf_counter() - t0, first_ckpt - started


def _kill_at(kind: str, run_dir: Path, rng: np.random.Generator, total: float, round1: float) -> None:
    """Start a run and SIGKILL it at an instant of ``kind``, drawn from ``rng``; check what it hit."""
    ckpt_tmp = f".{CHECKPOINT_FILE}."
    if kind == "any instant":
        proc = _start(run_dir)
        time.sleep(rng.uniform(0, total))
    elif kind == "round 1, before any checkpoint":
        # The first checkpoint is held back 1 s before its rename, so the window is certain.
        proc = _start(run_dir, {io.PAUSE_ENV: f"{CHECKPOINT_FILE}:1.0"})
        _wait_for(lambda: (run_dir / "config.yaml").exists(), proc)
        time.sleep(rng.uniform(0, round1))
    else:  # during the write of round k's checkpoint, held 0.5 s before its rename
        k = int(rng.integers(1, ROUNDS + 1))
        proc = _start(run_dir, {io.PAUSE_ENV: f"{CHECKPOINT_FILE}:0.5"})
        for _ in range(k):
            _wait_for(lambda: not any(n.startswith(ckpt_tmp) for n in _temps(run_dir)), proc)
            _wait_for(lambda: any(n.startswith(ckpt_tmp) for n in _temps(run_dir)), proc)
        time.sleep(rng.uniform(0, 0.4))
    proc.kill()  # SIGKILL; the forkserver reaps its children, so never os.kill a pid it may have reaped
    proc.join()
    assert proc.exitcode in (-signal.SIGKILL, 0)
    if kind == "round 1, before any checkpoint":
        assert proc.exitcode != 0 and not (run_dir / CHECKPOINT_FILE).exists()
    if kind == "during a checkpoint write":
        assert proc.exitcode != 0 and any(n.startswith(ckpt_tmp) for n in _temps(run_dir)), "killed mid-write"


def test_sigkill_at_9_random_instants_then_auto_resume_gives_the_uninterrupted_weights(tmp_path, monkeypatch):
    # The forkserver starts with the next Process; it imports its preloads from PYTHONPATH only.
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
    _FORKSERVER.set_forkserver_preload(["crash_forkserver", __name__])
    total, round1 = _reference(tmp_path / "reference")
    reference = load_file(tmp_path / "reference" / MODEL_FILE)
    expected = pd.read_csv(tmp_path / "reference" / "metrics.csv")[DETERMINISTIC]
    rng = np.random.default_rng(20)
    plan = [kind for kind, n in KILLS.items() for _ in range(n)]
    for i in rng.permutation(len(plan)):
        kind, run_dir = plan[i], tmp_path / f"kill{i:02d}"
        _kill_at(kind, run_dir, rng, total, round1)
        proc = _start(run_dir, auto_resume=True)
        _join(proc)
        log = (run_dir.parent / f"{run_dir.name}.log").read_text()
        assert proc.exitcode == 0, f"{kind}: {log[-2000:]}"
        assert _temps(run_dir) == [], kind
        final = load_file(run_dir / MODEL_FILE)
        assert final.keys() == reference.keys()
        assert all(torch.equal(final[k], reference[k]) for k in reference), f"{kind}: weights differ"
        pd.testing.assert_frame_equal(pd.read_csv(run_dir / "metrics.csv")[DETERMINISTIC], expected)
        files = [p for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_FILE]  # tensorboard/ included
        modes = {str(p.relative_to(run_dir)): stat.S_IMODE(p.stat().st_mode) for p in files}
        assert set(modes.values()) == {io.file_mode()}, modes  # 0o644 under umask 022, never mkstemp's 0600
