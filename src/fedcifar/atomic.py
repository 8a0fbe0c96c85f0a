"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

The ground floor: it imports nothing from fedcifar, so every layer (config, data, track, ...)
can write its files through it.

A file is written to a temporary name beside it (``.NAME.XXXXXXXX.tmp``), made readable as
``open()`` would make it (``0o666`` less the umask: group-readable under the usual umasks,
unlike ``mkstemp``'s 0600, so a server running as another user can read the run), flushed
to disk, renamed over the target, and the directory is flushed so the rename itself
survives a power cut. A process killed between those steps leaves at worst a temporary
file, which :func:`remove_stale_temps` deletes when the next run claims the directory.

Test hook: ``FEDCIFAR_TEST_PAUSE_REPLACE=NAME:SECONDS`` sleeps before the rename of every
write of a file called NAME, so a test can kill a run while that file is being written
(``tests/test_crash_safety.py``). It is read only when set and changes nothing else.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PAUSE_ENV = "FEDCIFAR_TEST_PAUSE_REPLACE"
# mkstemp's names: the prefix and suffix given below around 8 characters of [a-z0-9_].
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask must set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give a new file."""
    return 0o666 & ~_umask()


def fsync_dir(folder: str | Path) -> None:
    """Flush a directory's entries (a rename in it) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_for_tests(path: Path) -> None:
    hook = os.environ.get(PAUSE_ENV)
    if hook:
        name, _, seconds = hook.rpartition(":")
        if name == path.name:
            time.sleep(float(seconds))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; if the block succeeds, move it over ``path`` durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())
        _fsync_file(tmp_path)  # the data is on disk before the name points at it
        _pause_for_tests(path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)  # and the new name is on disk too
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder``; return them.

    Call it only while holding the folder's run lock, so no live writer owns them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMP_NAME.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        fsync_dir(folder)
    return stale
