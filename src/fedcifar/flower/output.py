"""Text to and from Flower's tools: their JSON output, their logs, TOML run and node configs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def json_in(text: str) -> dict:
    """The JSON object `flwr ... --format json` printed (anything else printed before it ignored)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in: {text[-300:]}")
    return json.loads(text[start:])


def toml_document(config: Mapping[str, object]) -> str:
    """A flat TOML document of str/int/float/bool values (JSON string escapes are valid TOML)."""
    lines = []
    for key, value in config.items():
        key = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
        else:
            raise TypeError(f"run config {key!r}: {type(value).__name__} is not str, int, float or bool")
    return "\n".join(lines) + "\n"


def format_node_config(values: Mapping[str, object]) -> str:
    """A SuperNode's ``--node-config`` string: ``partition-id=0 data-path='/a b/shards'``.

    Flower splits it at spaces outside quotes and reads each ``key=value`` as TOML, so a string
    is a TOML literal string in single quotes (no escapes: any path without ``'`` or a newline),
    else a basic string in double quotes (a path with ``'`` but no ``"``). Keys must be bare.
    """
    parts = []
    for key, value in values.items():
        if not _BARE_KEY.fullmatch(key):
            raise ValueError(f"node config key {key!r}: only letters, digits, '_' and '-'")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif not isinstance(value, str):
            raise TypeError(f"node config {key!r}: {type(value).__name__} is not str, int, float or bool")
        elif "\n" in value or ("'" in value and '"' in value):
            raise ValueError(f"node config {key}={value!r}: a value cannot hold a newline, or both ' and \"")
        else:
            text = f"'{value}'" if "'" not in value else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def exit_reason(log: str | Path) -> str:
    """``": <why the process stopped>"`` from its log, for one-line errors ("" if unreadable).

    Flower's exit message (``Exit Code: N`` and the lines after it) if there is one, else the
    last line that reads like an error, else the last line.
    """
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", Path(log).read_text(errors="replace"))
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines()]
    exits = [i for i, line in enumerate(lines) if "Exit Code:" in line]
    if exits:
        block = []
        for line in lines[exits[-1] :]:
            if not line or line.startswith("For more information"):
                break
            block.append(line)
        block[0] = block[0][block[0].index("Exit Code:") :]
        return ": " + " ".join(block)[-400:]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.search(r"^[\w.]+(Error|Exception)\b|ERROR|[Ff]ailed", line)]
    return f": {(errors or lines)[-1][-300:]}" if lines else ""


def one_line(text: str, limit: int = 500) -> str:
    """Non-empty lines joined with `` | ``, at most the last `limit` characters."""
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())[-limit:]


def tail(output: str, n: int = 15) -> str:
    """The last `n` lines of `output` after a newline ("" if there are none)."""
    lines = output.strip().splitlines()[-n:]
    return ("\n" + "\n".join(lines)) if lines else ""
