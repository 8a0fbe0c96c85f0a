"""Peak memory of a process tree, sampled from /proc (Linux).

Flower's simulation spreads over Ray's driver, raylet, GCS and worker processes, so the
memory of "an implementation" is the sum over its whole tree. RSS counts a page shared by
two processes twice; PSS splits it between them, so the PSS sum is the honest total.
"""

from __future__ import annotations

import resource
import threading
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of ``pid``, or None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()  # fields after "pid (comm)"
    return int(rest[1]), int(rest[3])


def process_tree(root: int) -> set[int]:
    """``root``, its descendants, and anything else in its session (daemons Ray starts)."""
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)], sessions[int(entry.name)] = fields
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    sid = sessions.get(root)
    if sid is not None and sid == root:  # only when root leads its own session
        tree |= {pid for pid, s in sessions.items() if s == sid}
    return tree


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; (0, 0) if it is gone or unreadable."""
    rss = pss = 0
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


@dataclass
class Peak:
    rss_mb: float = 0.0  # peak of the summed RSS over the tree
    pss_mb: float = 0.0  # peak of the summed PSS over the tree
    processes: int = 0  # most processes seen at once


class TreeSampler:
    """Samples a process tree's memory every ``interval`` seconds until stopped.

    Reading smaps_rollup walks the page tables of a process, so sampling is not free: it takes CPU
    from the measured child, less the longer the interval (1 s by default; docs/benchmark.md).
    """

    def __init__(self, root: int, interval: float = 1.0) -> None:
        self.root, self.interval = root, interval
        self.peak = Peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mem-sampler", daemon=True)

    def sample(self) -> None:
        pids = process_tree(self.root)
        usage = [memory_kb(p) for p in pids]
        rss, pss = sum(u[0] for u in usage) / 1024, sum(u[1] for u in usage) / 1024
        self.peak = Peak(max(self.peak.rss_mb, rss), max(self.peak.pss_mb, pss), max(self.peak.processes, len(pids)))

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def own_peak_rss_mb() -> float:
    """The kernel's exact high-water mark of this process's RSS (ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
