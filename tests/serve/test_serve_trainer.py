"""``fedcifar serve --run RUN --train-preset smoke`` (``make run``): no orphaned trainer, whatever stops the server.

Each test starts the real system as a process, finds its trainer (a child of the server),
stops the server one way (SIGTERM, SIGHUP, SIGINT, SIGKILL) and checks that the trainer is
gone too. (A trainer that fails leaves the server serving: tests/test_browser.py checks it on the dashboard.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcifar.serve.trainer import last_line
from httpcheck import free_port, get_json


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} while waiting for {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return value


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def trainer_of(server: subprocess.Popen) -> int | None:
    """The pid of the server's child once it runs ``fedcifar train`` (after the guard's exec)."""
    out = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
    for pid in map(int, out):
        try:
            if b"\0train\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except FileNotFoundError:
            pass
    return None


class System:
    def __init__(self, run_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        cmd = [sys.executable, "-m", "fedcifar", "serve", "--run", str(run_dir), "--train-preset", "smoke"]
        cmd += ["--port", str(self.port), "--reload-interval", "0.2"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.trainer: int | None = None

    def wait(self, predicate, timeout: float, what: str):
        return wait_for(predicate, timeout, what, self.proc, self.log_path)

    def started(self) -> int:
        """Wait for the server to answer and the trainer to run; the trainer's pid."""
        self.trainer = self.wait(lambda: trainer_of(self.proc), 120, "the trainer")
        self.wait(lambda: get_json(self.url + "/api/run")[0] == 200, 120, "the server")
        return self.trainer

    def cleanup(self) -> None:
        for pid in (self.proc.pid, self.trainer):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def system(tmp_path):
    made: list[System] = []

    def start(run_dir: Path | None = None) -> System:
        made.append(System(run_dir or tmp_path / "run", tmp_path / "system.log"))
        return made[-1]

    yield start
    for s in made:
        s.cleanup()


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_stops_server_and_trainer(system, sig):
    s = system()
    trainer = s.started()
    os.kill(s.proc.pid, sig)  # to the server alone, as a service manager or `kill` sends it
    assert s.proc.wait(timeout=120) == 0, s.log_path.read_text()[-3000:]
    assert gone_within(trainer, 10), f"trainer {trainer} outlived the server"
    assert "fedcifar: stopping training" in s.log_path.read_text()


def test_sigkill_of_the_server_takes_the_training_down(system, tmp_path):
    s = system()
    trainer = s.started()
    s.wait(lambda: (tmp_path / "run" / "config.yaml").exists(), 180, "training to start")  # past imports and data
    os.kill(s.proc.pid, signal.SIGKILL)  # no handler runs: only the kernel's parent-death signal can help
    s.proc.wait(timeout=30)
    assert gone_within(trainer, 10), f"trainer {trainer} outlived the killed server"


def test_last_line_of_a_progress_bar_output():
    assert last_line("rounds: 10%\rrounds: 20%\r\nfedcifar: error: boom\n\n") == "fedcifar: error: boom"
    assert last_line("\n \r") is None
