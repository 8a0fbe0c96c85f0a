"""One trainer per run directory: an advisory ``flock`` on ``RUN_DIR/.lock``.

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a
lock is never stale. The file keeps the holder's pid, for the error a second trainer gets.
Claims are counted per process: the CLI, the engine and :class:`~fedcifar.track.rundir.RunDir`
may all claim the directory they work on, and only the first claim takes the lock (and
deletes the temporary files a killed writer left, see :mod:`fedcifar.atomic`).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedcifar.atomic import remove_stale_temps
from fedcifar.errors import UserError

LOCK_FILE = ".lock"

_held: dict[Path, tuple[int, int]] = {}  # resolved run dir -> (fd, claims)
_mutex = threading.Lock()


class RunDirInUse(UserError):
    """Another process holds the run directory."""


def _holder(fd: int) -> str:
    """The pid written in the lock file (its holder may not have written it yet: wait a little)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


def acquire(run_dir: str | Path) -> None:
    """Claim ``run_dir`` (created if missing) for this process, or raise :class:`RunDirInUse`."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    with _mutex:
        if key in _held:
            fd, claims = _held[key]
            _held[key] = (fd, claims + 1)
            return
        fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise RunDirInUse(f"{path}: run directory in use (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = (fd, 1)
    remove_stale_temps(key)


def release(run_dir: str | Path) -> None:
    """Drop one claim; the last one unlocks the directory."""
    key = Path(run_dir).resolve()
    with _mutex:
        if key not in _held:
            return
        fd, claims = _held[key]
        if claims > 1:
            _held[key] = (fd, claims - 1)
            return
        del _held[key]
        os.close(fd)  # closing the only descriptor releases the flock


@contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir`` for the duration of the block."""
    acquire(run_dir)
    try:
        yield Path(run_dir)
    finally:
        release(run_dir)
