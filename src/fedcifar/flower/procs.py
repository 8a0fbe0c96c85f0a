"""Processes and ports on this machine, through psutil.

A pid names one process only together with its start time (`start_time`), so a pid the kernel
reused is never taken for a federation's. Every process a federation starts carries
``FEDCIFAR_FLOWER_FEDERATION=<marker>`` in its environment (`child_env`), and Flower passes its
environment on, so `marked` finds their children too, even those that left the process tree.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
MARKER_ENV = "FEDCIFAR_FLOWER_FEDERATION"  # every process of a federation carries it

# The children run offline: no telemetry, no update check, no `uv sync` of an app's dependencies
# (the SuperLink does that by default; the apps import what this environment has).
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _since_boot(proc: psutil.Process) -> float:
    return round(proc.create_time() - psutil.boot_time(), 2)  # the kernel counts in 10 ms ticks


def start_time(pid: int) -> float | None:
    """Seconds from boot to the process's start: with the pid, it names one process.

    From boot, not the epoch, so that a step of the system clock does not change it.
    """
    try:
        return _since_boot(psutil.Process(pid))
    except psutil.Error:
        return None


def process_start_unix(pid: int | None = None) -> float | None:
    """When the process started, in seconds since the epoch (10 ms resolution); None if it is gone.

    Processes on one machine share the clock, so the benchmark puts a ClientApp's start on the
    server's timeline with it (for a forked ClientApp, the start is the fork).
    """
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int, started: float | None = None) -> bool:
    """True while the process exists and is not a zombie (and started at `started`, if given)."""
    try:
        proc = psutil.Process(pid)
        return _running(proc) and (started is None or _since_boot(proc) == started)
    except psutil.Error:
        return False


def descendants(pids: Iterable[int]) -> set[int]:
    """Every living descendant of `pids` (children, grandchildren, ...), not `pids` themselves."""
    pids = set(pids)
    found: set[int] = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True) if _running(child))
    return found - pids


def marked(marker: str) -> set[int]:
    """Living processes (but this one) whose environment carries ``FEDCIFAR_FLOWER_FEDERATION=marker``."""
    return {
        proc.pid
        for proc in psutil.process_iter(["environ"])  # environ None: another user's, or a zombie
        if proc.pid != os.getpid() and (proc.info["environ"] or {}).get(MARKER_ENV) == marker and _running(proc)
    }


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads, if it still leads one (each child starts its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes hold (IPv4 and IPv6).

    The processes share this one's network namespace (psutil reads this process's socket table).
    """
    found = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    ip = ipaddress.ip_address(conn.laddr.ip)
                    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is 127.0.0.1
                    found.add((pid, str(ip), conn.laddr.port))
    return sorted(found)


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports that are free on `host` right now (held open together, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports


def client_host(host: str) -> str:
    """Where local clients reach a SuperLink bound to `host` (loopback for a wildcard address)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return ("::1" if ip.version == 6 else LOOPBACK) if ip.is_unspecified else host


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process a federation starts.

    This interpreter's environment, plus: its ``bin`` directory first on PATH (the SuperLink and
    SuperNodes start `flower-superexec`, `flwr-serverapp` and `flwr-clientapp` by name), the
    directory this fedcifar was imported from first on PYTHONPATH (so the apps import the same
    fedcifar, e.g. a git worktree's), Flower's telemetry, update check and dependency install off,
    then `extra` on top.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    src = Path(__file__).resolve().parents[2]
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if "site-packages" not in src.parts and str(src) not in paths:
        paths.insert(0, str(src))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(OFFLINE_ENV)
    env.update(extra or {})
    return env
