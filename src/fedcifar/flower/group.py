"""The processes started for one work directory, recorded so that any process can stop them.

``WORKDIR/federation.json`` holds the state: a marker every process carries in its environment
(``FEDCIFAR_FLOWER_FEDERATION``), and per process its role, name, pid, start time (so a reused
pid is never signalled), log and command line. `ProcessGroup.down` stops them, their
descendants and every marked process, from this process or any other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self

from fedcifar.flower.output import exit_reason
from fedcifar.flower.procs import alive, descendants, marked, signal_group, start_time

STATE_FILE = "federation.json"


class FederationError(RuntimeError):
    """A process of the federation did not start, connect or finish as it should."""


class ProcessGroup:
    """Processes started into one work directory, each in a session of its own, logs in ``WORKDIR/logs``."""

    def __init__(self, workdir: str | Path, state: dict) -> None:
        self.workdir = Path(workdir).resolve()
        self.state = state
        self._popen: dict[int, subprocess.Popen] = {}  # processes this object started (reaped)

    @staticmethod
    def new_state(**fields: object) -> dict:
        """A fresh state: a new marker, no processes, plus `fields`."""
        return {"marker": uuid.uuid4().hex, **fields, "processes": []}

    @classmethod
    def attach(cls, workdir: str | Path) -> Self:
        """The group recorded in ``workdir/federation.json`` (e.g. started by another process)."""
        path = Path(workdir) / STATE_FILE
        if not path.is_file():
            raise FederationError(f"no federation recorded in {path}")
        try:
            return cls(workdir, json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise FederationError(f"cannot read {path}: {exc}") from None

    @property
    def marker(self) -> str:
        return self.state["marker"]

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.workdir / STATE_FILE)

    def spawn(self, role: str, name: str, argv: list[str], env: dict[str, str], **extra: object) -> dict:
        """Start `argv` with output to ``logs/NAME.log``; record it (with `extra`) and return the record."""
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # its own process group, out of reach of the caller's ^C
            )
        self._popen[proc.pid] = proc
        record = {"role": role, "name": name, "pid": proc.pid, "start": start_time(proc.pid), "log": str(log)}
        record.update(extra)
        record["argv"] = argv
        self.state["processes"].append(record)
        self.save()
        return record

    def wait_ready(self, ready: Callable[[], bool], timeout: float, record: dict, what: str) -> None:
        """Poll `ready` until true; a `FederationError` if the process exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_running([record], f"it would {what}")
            if time.monotonic() > deadline:
                raise FederationError(
                    f"{record['name']} did not {what} within {timeout:.0f} s; see {record['log']}"
                    f"{exit_reason(record['log'])}"
                )
            time.sleep(0.2)

    def check_running(self, records: Iterable[dict], before: str) -> None:
        """A `FederationError` naming the first of these processes that exited, and why, if one did."""
        for p in records:
            if not alive(p["pid"]):
                raise FederationError(
                    f"{p['name']} exited (code {self.exit_code(p['pid'])}) before {before}; "
                    f"see {p['log']}{exit_reason(p['log'])}"
                )

    def returncode(self, pid: int) -> int | None:
        """Exit code of a process this object started, None while it runs (or if not its child)."""
        proc = self._popen.get(pid)
        return proc.poll() if proc is not None else None

    def exit_code(self, pid: int) -> int | str:
        """`returncode`, or "unknown", for messages."""
        code = self.returncode(pid)
        return "unknown" if code is None else code

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        """Wait up to `timeout` s for a process to end; its exit code (None: still running or unknown)."""
        proc = self._popen.get(pid)
        if proc is not None:  # waitpid: a multi-threaded process is a zombie before it can be reaped
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            return proc.returncode
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return None

    def pids(self) -> set[int]:
        """Every living process of the group: those it started, their descendants, the marked."""
        started = {p["pid"] for p in self.state["processes"] if alive(p["pid"], p.get("start"))}
        return started | descendants(started) | marked(self.marker)

    def down(self, grace: float = 5.0) -> set[int]:
        """Stop every process of the group: SIGTERM, then SIGKILL after `grace` seconds.

        Works from any process (it reads the pids from ``federation.json`` and checks their start
        times). Returns the pids that were signalled; on return none of them is alive.
        """
        signalled: set[int] = set()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0), (signal.SIGKILL, 5.0)):
            targets = self.pids()
            if not targets:
                break
            for p in self.state["processes"]:
                if alive(p["pid"], p.get("start")):
                    signal_group(p["pid"], sig)  # the session it leads: its ClientApps, ...
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            signalled |= targets
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self._reap()
                if not any(alive(pid) for pid in targets):
                    break
                time.sleep(0.1)
        self._reap()
        left = self.pids()
        if left:
            raise FederationError(f"processes still alive after SIGKILL: {sorted(left)}")
        return signalled

    def _reap(self) -> None:
        for proc in self._popen.values():
            proc.poll()
