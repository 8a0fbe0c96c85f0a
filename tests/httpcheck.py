"""HTTP helpers shared by the tests that start a real server (importable: pyproject adds tests/ to the path)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from fedcifar.flower.procs import free_ports


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    return free_ports(1)[0]


def get_json(url: str) -> tuple[int, dict]:
    """(status, JSON body) of a GET; (0, {}) when nothing answers or the body is not JSON."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}
