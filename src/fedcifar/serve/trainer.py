"""``fedcifar train`` as a child process beside the server (``fedcifar serve --train-preset``, ``make run``).

The trainer never outlives the server: it is started through
:mod:`fedcifar.serve.orphan_guard`, so the kernel sends it SIGTERM when the server process
exits for any reason, SIGKILL included. A clean stop (a signal to the server) asks it to stop
as Ctrl-C would and waits for it. A trainer that fails does not stop the server: the server
keeps serving the last model, and :class:`TrainerStatus` (shown by ``/api/run`` and the
dashboard) says what happened, with the last line the trainer printed.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("fedcifar.serve")

INTERRUPTED = {130, -signal.SIGINT, -signal.SIGTERM}  # how a trainer stopped by Ctrl-C or TERM exits
TAIL_BYTES = 8192
_LINE_BREAKS = re.compile(r"[\r\n]+")


@dataclass
class TrainerStatus:
    """What the dashboard shows about the training process. ``state``: starting, running, finished, failed, stopped."""

    command: str
    state: str = "starting"
    pid: int | None = None
    exit_code: int | None = None
    detail: str | None = None  # the trainer's last line on stderr, when it failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_line(text: str) -> str | None:
    """The last non-empty line of a terminal's output (progress bars redraw with carriage returns)."""
    lines = [line.strip() for line in _LINE_BREAKS.split(text) if line.strip()]
    return lines[-1] if lines else None


class Trainer:
    """Starts, watches and stops ``fedcifar train --preset PRESET --out RUN_DIR --auto-resume``."""

    def __init__(self, preset: str, run_dir: Path, data_dir: str | None) -> None:
        self.cmd = [sys.executable, "-m", "fedcifar", "train", "--preset", preset, "--out", str(run_dir)]
        self.cmd.append("--auto-resume")
        if data_dir:
            self.cmd += ["--data-dir", data_dir]
        shown = ["fedcifar", "train", "--preset", preset, "--out", Path(run_dir).name, "--auto-resume"]
        self.status = TrainerStatus(command=" ".join(shown))  # no absolute paths: clients read it
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self._tail = b""
        self._pump: threading.Thread | None = None

    def start(self) -> None:
        """Start training (call from the main thread: the parent-death signal follows the thread that forks)."""
        print(f"fedcifar: training beside the server: {' '.join(self.cmd[2:])}", file=sys.stderr, flush=True)
        guard = [sys.executable, "-m", "fedcifar.serve.orphan_guard", str(os.getpid()), "--", *self.cmd]
        # Its own session: a terminal's Ctrl-C reaches the server only, which then stops training
        # with exactly one SIGINT. (Two would interrupt the trainer's own clean shutdown.)
        self.proc = subprocess.Popen(guard, start_new_session=True, stderr=subprocess.PIPE)
        self.status.pid, self.status.state = self.proc.pid, "running"
        self._pump = threading.Thread(target=self._forward_stderr, name="fedcifar-trainer-stderr", daemon=True)
        self._pump.start()
        threading.Thread(target=self._watch, name="fedcifar-trainer-watch", daemon=True).start()

    def _forward_stderr(self) -> None:
        """Copy the trainer's stderr to ours as it comes (progress bars included), keeping its tail."""
        assert self.proc is not None and self.proc.stderr is not None
        out = getattr(sys.stderr, "buffer", None)
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 4096):
            self._tail = (self._tail + chunk)[-TAIL_BYTES:]
            try:
                if out is not None:
                    out.write(chunk)
                    out.flush()
                else:
                    sys.stderr.write(chunk.decode(errors="replace"))
            except (OSError, ValueError):
                pass  # our stderr is gone: keep draining so the trainer never blocks on a full pipe

    def _watch(self) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=5)
        self.status.exit_code = code
        if self.stopping or code in INTERRUPTED:
            self.status.state = "stopped"
        elif code == 0:
            self.status.state = "finished"
            log.info("fedcifar serve: training finished; still serving the final model")
        else:
            self.status.state = "failed"
            self.status.detail = last_line(self._tail.decode(errors="replace"))
            log.error(
                "fedcifar serve: training exited with code %s (%s); still serving the last model",
                code,
                self.status.detail or "no message",
            )

    @property
    def failed(self) -> bool:
        return self.status.state == "failed"

    def hurry(self) -> None:
        """Stop at once (SIGTERM): the checkpoint on disk is complete either way."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, grace: float = 300.0) -> int | None:
        """Stop training as Ctrl-C would (it keeps its last complete round) and wait for it.

        Training finishes the client updates in flight before it exits; :meth:`hurry` (a second
        signal to the server) ends it at once.
        """
        if self.proc is None:
            return None
        self.stopping = True
        if self.proc.poll() is not None:
            return self.proc.returncode
        print(
            "fedcifar: stopping training: it finishes the client updates in flight and keeps its last complete"
            " round (Ctrl-C again to stop it now)",
            file=sys.stderr,
            flush=True,
        )
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
