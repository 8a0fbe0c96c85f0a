"""No orphaned trainer, whatever stops the server (``fedcifar serve --train-preset``, ``make run``).

The mechanism is tested directly, in about a second a case: a small server process starts a
stand-in trainer through :class:`fedcifar.serve.trainer.Trainer` (so through the orphan guard)
and runs :func:`fedcifar.serve.cli._serve_beside` around a fake web server; each stop signal,
and SIGKILL, must take the trainer down. One full system (the real server and a real
``fedcifar train``) checks the same end to end. (A trainer that fails leaves the server
serving: tests/test_browser.py checks it on the dashboard.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcifar.serve.orphan_guard import PARENT_GONE
from fedcifar.serve.trainer import last_line
from helpers import wait_for
from httpcheck import free_port, get_json

STOPS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]

# A stand-in for `fedcifar train`: writes its pid, then sleeps until Ctrl-C, and says how it stopped.
FAKE_TRAINER = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
(out / "trainer.pid").write_text(str(os.getpid()))
try:
    time.sleep(600)
except KeyboardInterrupt:
    (out / "stopped").write_text("SIGINT")
    sys.exit(130)
"""
# The server side of `serve --train-preset` without uvicorn: the real Trainer (through the orphan
# guard) and the real _serve_beside around a web server that runs until told to exit.
FAKE_SERVER = """
import socket, sys, time
from pathlib import Path
from fedcifar.serve.cli import _serve_beside
from fedcifar.serve.trainer import Trainer

class Server:
    should_exit = False

    def run(self, sockets):
        while not self.should_exit:
            time.sleep(0.01)

out = Path(sys.argv[1])
trainer = Trainer("smoke", out, None)
trainer.cmd = [sys.executable, "-c", sys.argv[2], str(out)]
sys.exit(_serve_beside(Server(), socket.socket(), trainer, out))
"""


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
        return wait_for(predicate, timeout, what, proc=self.proc, log=self.log_path)

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


def start_fake_server(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """The fake server and its stand-in trainer's pid, once the trainer runs."""
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        cmd = [sys.executable, "-c", FAKE_SERVER, str(tmp_path), FAKE_TRAINER]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file = tmp_path / "trainer.pid"
    trainer = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the trainer", proc=proc, log=log))
    return proc, trainer


@pytest.fixture
def fake_server(tmp_path):
    started: list[tuple[subprocess.Popen, int]] = []

    def start() -> tuple[subprocess.Popen, int]:
        started.append(start_fake_server(tmp_path))
        return started[-1]

    yield start
    for proc, trainer in started:
        for pid in (proc.pid, trainer):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_a_stop_signal_to_the_server_stops_its_trainer_with_one_sigint(fake_server, tmp_path, sig):
    server, trainer = fake_server()
    os.kill(server.pid, sig)
    log = tmp_path / "server.log"
    assert server.wait(timeout=30) == 0, log.read_text()
    assert gone_within(trainer, 5), f"trainer {trainer} outlived the server"
    assert (tmp_path / "stopped").read_text() == "SIGINT"  # asked as Ctrl-C would, so it keeps its round
    assert "fedcifar: stopping training" in log.read_text()


def test_sigkill_of_the_server_takes_its_trainer_down(fake_server):
    server, trainer = fake_server()
    os.kill(server.pid, signal.SIGKILL)  # no handler runs: only the kernel's parent-death signal can help
    server.wait(timeout=30)
    assert gone_within(trainer, 5), f"trainer {trainer} outlived the killed server"


def test_the_guard_runs_nothing_when_its_parent_is_already_gone(tmp_path):
    marker = tmp_path / "ran"
    cmd = [sys.executable, "-m", "fedcifar.serve.orphan_guard", "1", "--", "/usr/bin/touch", str(marker)]
    assert subprocess.run(cmd, timeout=30).returncode == PARENT_GONE  # pid 1 is not our parent
    assert not marker.exists()


@pytest.mark.integration
def test_the_full_system_stops_server_and_trainer_on_sigterm(system):
    """The real server and a real `fedcifar train`: the trainer's own clean stop ends both."""
    s = system()
    trainer = s.started()
    os.kill(s.proc.pid, signal.SIGTERM)  # to the server alone, as a service manager or `kill` sends it
    assert s.proc.wait(timeout=120) == 0, s.log_path.read_text()[-3000:]
    assert gone_within(trainer, 10), f"trainer {trainer} outlived the server"
    assert "fedcifar: stopping training" in s.log_path.read_text()


def test_last_line_of_a_progress_bar_output():
    assert last_line("rounds: 10%\rrounds: 20%\r\nfedcifar: error: boom\n\n") == "fedcifar: error: boom"
    assert last_line("\n \r") is None
