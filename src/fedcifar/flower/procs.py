"""Processes and ports on this machine, read from /proc (Linux; psutil is not needed).

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
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

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


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    return fields[0], int(fields[1]), int(fields[19])


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process."""
    stat = _stat(pid)
    return stat[2] if stat else None


def process_start_unix(pid: int | None = None) -> float | None:
    """When the process started, in seconds since the epoch (10 ms resolution); None if it is gone.

    Processes on one machine share the clock, so the benchmark puts a ClientApp's start on the
    server's timeline with it (for a forked ClientApp, the start is the fork).
    """
    ticks = start_time(os.getpid() if pid is None else pid)
    if ticks is None:
        return None
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")  # start time counts from boot
    return time.time() - age


def alive(pid: int, started: int | None = None) -> bool:
    """True while the process exists and is not a zombie (and started at `started`, if given)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and (started is None or stat[2] == started)


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(pids: Iterable[int]) -> set[int]:
    """Every living descendant of `pids` (children, grandchildren, ...), not `pids` themselves."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat and stat[0] != "Z":
            children.setdefault(stat[1], []).append(pid)
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found - set(pids)


def marked(marker: str) -> set[int]:
    """Living processes (but this one) whose environment carries ``FEDCIFAR_FLOWER_FEDERATION=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = set()
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(pid):
            found.add(pid)
    return found


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads, if it still leads one (each child starts its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes hold (IPv4 and IPv6).

    From /proc/PID/net/tcp{,6} (sockets in LISTEN state, by inode) and /proc/PID/fd (which of
    those inodes the process holds).
    """
    found = []
    for pid in pids:
        listening: dict[str, tuple[str, int]] = {}  # socket inode -> (address, port)
        for table, v6 in (("tcp", False), ("tcp6", True)):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A":  # TCP_LISTEN
                        listening[cols[9]] = _decode_address(cols[1], v6)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and (inode := target[8:-1]) in listening:
                        found.append((pid, *listening[inode]))
    return sorted(set(found))


def _decode_address(hex_address: str, v6: bool) -> tuple[str, int]:
    """Decode /proc/net/tcp's ``0100007F:1F90`` (address words in host byte order)."""
    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    # Each 32-bit word is stored little-endian on the machines this runs on.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.IPv6Address(raw) if v6 else ipaddress.IPv4Address(raw)
    if v6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


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
