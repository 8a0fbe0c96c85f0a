"""The `flwr` CLI against one SuperLink: register SuperNode keys, list nodes, submit and stop runs.

Every call runs with ``FLWR_HOME`` set to a project-local Flower home whose ``config.toml``
names the SuperLink as the connection ``fedcifar`` (`FlwrCli.write_config`), so the user's own
``~/.flwr`` is never read or written.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedcifar.flower.group import FederationError
from fedcifar.flower.output import json_in, one_line, tail, toml_document
from fedcifar.flower.procs import signal_group

CONNECTION = "fedcifar"  # the SuperLink connection name in FLWR_HOME/config.toml
RUN_STARTED = re.compile(r"Successfully started run (\d+)")
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class RunResult:
    """A finished (or, without streaming, submitted) `flwr run`."""

    run_id: int
    status: str  # e.g. "finished:completed"; see `flwr ls`
    returncode: int
    output: str  # what `flwr run` printed (with --stream: the ServerApp's log)
    log: Path


class FlwrCli:
    """`flwr` calls from `workdir` with the environment `env` (which sets ``FLWR_HOME``)."""

    def __init__(self, workdir: str | Path, env: Mapping[str, str]) -> None:
        self.workdir = Path(workdir)
        self.env = dict(env)

    @property
    def flwr_home(self) -> Path:
        return Path(self.env["FLWR_HOME"])

    def write_config(self, address: str, ca: Path | None) -> None:
        """``FLWR_HOME/config.toml``: the connection `flwr ... fedcifar` uses (and the default one)."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(toml_document({"address": address}).strip())
        lines.append(toml_document({"root-certificates": str(ca)}).strip() if ca else "insecure = true")
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def popen(self, args: list[str]) -> subprocess.Popen:
        """Start ``flwr ARGS`` in a session of its own, stdout and stderr together on a pipe."""
        return subprocess.Popen(
            ["flwr", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.workdir,
            env=self.env,
            start_new_session=True,
        )

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``flwr ARGS``; with `check`, a `FederationError` unless it exits 0."""
        proc = subprocess.run(
            ["flwr", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise FederationError(
                f"`flwr {' '.join(args)}` exited {proc.returncode}: {one_line(proc.stdout + proc.stderr)}"
            )
        return proc

    def register_keys(self, public_keys: Iterable[str | Path]) -> list[int]:
        """Register SuperNode public keys (``flwr supernode register``, all at once); their node ids."""
        public_keys = [Path(k).resolve() for k in public_keys]
        node_ids: list[int] = []
        batch = max(2, os.cpu_count() or 1)  # each call is a Python start-up of about a second
        for start in range(0, len(public_keys), batch):
            keys = public_keys[start : start + batch]
            procs = [self.popen(["supernode", "register", str(k), CONNECTION, "--format", "json"]) for k in keys]
            for key, proc in zip(keys, procs, strict=True):
                out, _ = proc.communicate(timeout=120)
                try:
                    node_ids.append(int(json_in(out)["node-id"]))
                except (ValueError, KeyError, TypeError):
                    raise FederationError(f"`flwr supernode register {key}` failed: {one_line(out)}") from None
        return node_ids

    def supernodes(self) -> list[dict]:
        """The SuperLink's list of SuperNodes (``flwr supernode ls --format json``): node-id, status, ..."""
        return json_in(self.run("supernode", "ls", CONNECTION, "--format", "json").stdout)["nodes"]

    def online(self) -> set[int]:
        """Ids of the SuperNodes the SuperLink reports online (connected and sending heartbeats)."""
        return {int(n["node-id"]) for n in self.supernodes() if n["status"] == "online"}

    def run_status(self, run_id: int) -> dict:
        """``flwr ls fedcifar --run-id ID --format json``: status ("finished:completed", ...), details, times."""
        return json_in(self.run("ls", CONNECTION, "--run-id", str(run_id), "--format", "json").stdout)["runs"][0]

    def stop(self, run_id: int) -> bool:
        """``flwr stop RUN_ID fedcifar``; False if that failed (e.g. the run had ended already)."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            return self.run("stop", str(run_id), CONNECTION, check=False, timeout=30).returncode == 0
        return False

    def submit(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, object] | None = None,
        *,
        stream: bool = True,
        timeout: float | None = 600.0,
        echo: Callable[[str], object] | None = None,
    ) -> RunResult:
        """``flwr run APP_DIR fedcifar [--run-config FILE] [--stream]``.

        With `stream` (the default) it blocks until the run ends and raises a `FederationError`
        unless the run ended ``finished:completed`` (`flwr run` itself exits 0 either way, so the
        status comes from ``flwr ls --run-id``); without it, it returns once the run is submitted.
        `run_config` is written to a TOML file (keys must be in the app's
        ``[tool.flwr.app.config]``; values str, int, float or bool). The output goes to
        ``workdir/logs/run-*.log`` as it comes, and to `echo` line by line. After `timeout`
        seconds (None: no limit), or on Ctrl-C, `flwr run` is killed and the run stopped.
        """
        tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        args = ["run", str(Path(app_dir).resolve()), CONNECTION]
        if run_config:
            config_file = self.workdir / "runs" / f"run-config-{tag}.toml"
            config_file.parent.mkdir(parents=True, exist_ok=True)
            config_file.write_text(toml_document(run_config))
            args += ["--run-config", str(config_file)]
        if stream:
            args.append("--stream")
        log = self.workdir / "logs" / f"run-{tag}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = self.popen(args)
        output, expired = self._follow(proc, log, timeout, echo)
        match = RUN_STARTED.search(output)
        if expired:
            if match:
                self.stop(int(match.group(1)))
            raise FederationError(f"`flwr run` did not finish within {timeout:.0f} s; see {log}")
        if proc.returncode != 0 or not match:
            raise FederationError(
                f"`flwr run` exited {proc.returncode} without starting a run; see {log}{tail(output)}"
            )
        run_id = int(match.group(1))
        status = self.run_status(run_id)
        result = RunResult(run_id, status["status"], proc.returncode, output, log)
        if stream and result.status != COMPLETED:
            details = status.get("status-details") or ""
            raise FederationError(f"run {run_id} ended {result.status} {details}; see {log}{tail(output)}")
        return result

    def _follow(
        self, proc: subprocess.Popen, log: Path, timeout: float | None, echo: Callable[[str], object] | None
    ) -> tuple[str, bool]:
        """Copy `proc`'s output to `log` (and `echo`) as it comes, until it exits: (output, timed out).

        After `timeout` seconds the process is killed. On Ctrl-C it is killed too, and the run it
        started (if any) is stopped on the SuperLink, so nothing goes on training unseen.
        """
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            signal_group(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire) if timeout else None
        lines: list[str] = []
        try:
            if timer:
                timer.start()
            with log.open("w") as f:
                for line in proc.stdout or ():
                    lines.append(line)
                    f.write(line)
                    f.flush()
                    if echo:
                        echo(line)
            proc.wait()
        except KeyboardInterrupt:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            if match := RUN_STARTED.search("".join(lines)):
                self.stop(int(match.group(1)))
            raise
        finally:
            if timer:
                timer.cancel()
        return "".join(lines), expired.is_set()
