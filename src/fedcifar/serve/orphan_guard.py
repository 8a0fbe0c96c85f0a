"""Run a command that dies with its parent: ``python -m fedcifar.serve.orphan_guard PARENT_PID -- CMD ...``.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is set in this small process, which
then checks that ``PARENT_PID`` is still its parent (it may have died before the signal was
armed) and ``exec``s the command. The setting survives ``exec``, so the command gets SIGTERM
the moment its parent exits, however it exits: a clean stop, a crash or SIGKILL.
Setting it here rather than in a ``preexec_fn`` keeps Python code out of the window between
``fork`` and ``exec`` in a parent that runs threads.

Exits 3 without running the command if the parent is already gone or the signal cannot be set.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_GONE = 3


def arm_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m fedcifar.serve.orphan_guard PARENT_PID -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    parent, cmd = int(argv[0]), argv[2:]
    if sys.platform.startswith("linux"):
        try:
            arm_parent_death_signal()
        except OSError as exc:
            print(f"fedcifar: error: cannot tie the trainer to the server's life: {exc}", file=sys.stderr)
            return PARENT_GONE
    if os.getppid() != parent:
        return PARENT_GONE  # the parent died before the signal was armed: nobody wants this command now
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
