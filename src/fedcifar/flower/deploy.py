"""A Flower deployment on this machine: one SuperLink and N SuperNodes, on 127.0.0.1 by default.

For tests, for ``fedcifar federation up|run|down`` and for trying the Deployment Engine without
a cluster::

    from fedcifar.flower.deploy import Federation

    fed = Federation.up(workdir, 3, node_config=lambda i: {"partition-id": i, "data-path": str(shards)})
    try:                                                   # TLS and SuperNode auth on by default
        result = fed.submit(app_dir, {"preset": "smoke"})  # `flwr run APP_DIR fedcifar --stream`
        assert result.status == "finished:completed"       # (else submit raised FederationError)
    finally:
        fed.down()                                         # or: with Federation.up(...) as fed: ...

The API (a failure is a `FederationError` whose first line says what and which log to read):

- ``Federation.up(workdir, nodes, *, tls=True, auth=True, node_config=None, host="127.0.0.1",
  app_env=None, database=None, poll_interval=None, timeout=None)`` starts everything and waits
  until every node is online; ``Federation.attach(workdir)`` finds one started elsewhere.
- ``Federation.simulation(workdir, nodes, *, ray=RayOptions(), host="127.0.0.1")`` starts a
  simulation SuperLink instead: Flower's Simulation Runtime, `nodes` virtual SuperNodes in Ray
  actors (`simulation.py`); the same apps, ``submit`` and ``down``.
- ``submit(app_dir, run_config, *, stream=True, timeout=600, echo=None)`` -> `RunResult`;
  ``run_status(run_id)``; ``flwr(*args)`` runs any `flwr` command against the SuperLink.
- ``nodes`` (`Node`: index, pid, port, log, node_id), ``address``, ``flwr_home``, ``ca``;
  ``supernodes()``, ``online()``, ``wait_online(ids or count)``; ``start_node(...)`` and
  ``register_keys(...)`` for nodes beyond the first N; ``wait_exit(pid, timeout)``.
- ``pids()``: every living process of the federation; ``down()`` stops them all (by pid and
  start time, from any process) and returns the pids it signalled.

Everything runs as Flower's own console scripts (flwr 1.41), each in its own session:
`flower-superlink` (one HTTPS port carries the Fleet, Control and Runtime APIs; its SuperExec
starts one `flwr-serverapp` process per run), and per node `flower-supernode` (its Runtime API on
a second port, always on 127.0.0.1; its SuperExec starts one `flwr-clientapp` process per
message). The `flwr` CLI talks to the SuperLink through a project-local Flower home,
``WORKDIR/flwr_home/config.toml``, under the connection name ``fedcifar`` (`control.py`).
``WORKDIR/federation.json`` records every process (`group.py`); logs are in ``WORKDIR/logs``.
"""

from __future__ import annotations

import shutil
import ssl
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedcifar.flower.certs import make_certs, make_node_key
from fedcifar.flower.control import CONNECTION, FlwrCli, RunResult
from fedcifar.flower.group import STATE_FILE, FederationError, ProcessGroup
from fedcifar.flower.output import format_node_config
from fedcifar.flower.procs import LOOPBACK, MARKER_ENV, child_env, client_host, free_ports
from fedcifar.flower.simulation import RayOptions

__all__ = [
    "CONNECTION",
    "STATE_FILE",
    "Federation",
    "FederationError",
    "Node",
    "RayOptions",
    "RunResult",
    "format_node_config",
]

CLIENTAPP_MODES = ("fresh", "warm")  # a new flwr-clientapp process per message, or one forked warm (warm.py)
NodeConfig = str | Mapping[str, object]  # a --node-config string, or its values (`format_node_config`)


@dataclass(frozen=True)
class Node:
    """A started SuperNode."""

    index: int
    pid: int
    port: int
    log: Path
    node_id: int | None  # known when its key was registered beforehand (SuperNode auth)


class Federation(ProcessGroup):
    """Handle on a running local federation; `up` starts one, `attach` finds one in a workdir."""

    @property
    def host(self) -> str:
        """The address the SuperLink listens on."""
        return self.state.get("host", LOOPBACK)

    @property
    def address(self) -> str:
        """HOST:PORT where the SuperNodes and the `flwr` CLI reach the SuperLink."""
        host = client_host(self.host)
        return f"[{host}]:{self.state['port']}" if ":" in host else f"{host}:{self.state['port']}"

    @property
    def flwr_home(self) -> Path:
        """The Flower home of the `flwr` CLI calls: its config.toml names the connection."""
        return self.workdir / "flwr_home"

    @property
    def tls(self) -> bool:
        return self.state["tls"]

    @property
    def auth(self) -> bool:
        return self.state["auth"]

    @property
    def ca(self) -> Path | None:
        return Path(self.state["certs"]["ca"]) if self.tls else None

    @property
    def nodes(self) -> list[Node]:
        return [
            Node(p["index"], p["pid"], p["port"], Path(p["log"]), p.get("node_id"))
            for p in self.state["processes"]
            if p["role"] == "supernode"
        ]

    @property
    def cli(self) -> FlwrCli:
        """The `flwr` CLI against this federation (``FLWR_HOME=workdir/flwr_home``)."""
        return FlwrCli(self.workdir, child_env({"FLWR_HOME": str(self.flwr_home), MARKER_ENV: self.marker}))

    # ---- starting

    @classmethod
    def up(
        cls,
        workdir: str | Path,
        nodes: int,
        *,
        tls: bool = True,
        auth: bool = True,
        node_config: Callable[[int], NodeConfig] | None = None,
        host: str = LOOPBACK,
        app_env: Mapping[str, str] | None = None,
        database: str | Path | None = None,
        poll_interval: float | None = None,
        timeout: float | None = None,
        clientapp: str = "fresh",
    ) -> Federation:
        """Start a SuperLink and `nodes` SuperNodes and wait until every node is online.

        `tls` makes a CA and a server certificate (for `host`, 127.0.0.1 and localhost) in
        ``workdir/certs`` (else everything is plain HTTP); `auth` (needs `tls`) gives each
        SuperNode a key registered with `flwr supernode register` before it starts, so the
        SuperLink admits only those. `node_config(i)` is SuperNode i's ``--node-config``: a string,
        or a mapping quoted by `format_node_config` (default ``partition-id=i num-partitions=nodes``). `host` is the address the
        SuperLink listens on. `app_env` is added to the environment of every process, the
        ServerApp and ClientApp processes included. `database` keeps the SuperLink's state in a
        file (default: in memory). `poll_interval` is how often (s) each SuperExec asks for work
        (Flower's default 1 s; 0.2 s makes short test runs faster). `timeout` (default 30 s plus
        2 s a node) bounds the start. `clientapp="warm"` starts each SuperNode with ``--isolation
        process`` and fedcifar's SuperExec beside it (`warm.py`: each message's ClientApp process
        is forked with torch and fedcifar already imported; Flower's SuperExec starts a fresh
        ``flwr-clientapp`` per message), and shortens the SuperNode's polls and pull retries
        (`warm.py`). On any failure whatever was started is stopped.
        """
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (flower-superlink refuses it otherwise)")
        if nodes < 1:
            raise ValueError(f"a federation needs at least one SuperNode, got nodes={nodes}")
        if clientapp not in CLIENTAPP_MODES:
            raise ValueError(f"clientapp is one of {', '.join(CLIENTAPP_MODES)}, got {clientapp!r}")
        workdir = Path(workdir).resolve()
        if (workdir / STATE_FILE).exists() and Federation.attach(workdir).pids():
            raise FederationError(f"a federation is still running from {workdir}: call down() first")
        env = dict(app_env or {})
        if poll_interval is not None:
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(poll_interval)
        state = cls.new_state(host=host, port=free_ports(1, host)[0], tls=tls, auth=auth, certs=None, env=env)
        state["clientapp"] = clientapp
        fed = cls(workdir, state)
        fed.save()
        try:
            fed._start(nodes, node_config, database, 30.0 + 2.0 * nodes if timeout is None else timeout)
        except BaseException:
            fed.down()
            raise
        return fed

    @classmethod
    def simulation(
        cls,
        workdir: str | Path,
        nodes: int,
        *,
        ray: RayOptions | None = None,
        host: str = LOOPBACK,
        timeout: float = 60.0,
    ) -> Federation:
        """Start a simulation SuperLink: each run gets `nodes` virtual SuperNodes on Ray (Flower's Simulation Runtime).

        No SuperNode processes: the run's `flwr-simulation` process runs the ServerApp and, in Ray
        actors, the ClientApp, one virtual node per client (node config ``partition-id``,
        ``num-partitions``). Plain HTTP on `host` (127.0.0.1: only this machine's `flwr` reaches
        it). `ray` says where the actors run (`RayOptions`: a private Ray instance on loopback, or
        a cluster). `submit`, `down` and ``with`` work as for `up`.
        """
        ray = ray or RayOptions()
        if nodes < 1:
            raise ValueError(f"a simulation needs at least one SuperNode, got nodes={nodes}")
        workdir = Path(workdir).resolve()
        if (workdir / STATE_FILE).exists() and Federation.attach(workdir).pids():
            raise FederationError(f"a federation is still running from {workdir}: call down() first")
        # Ray's sockets live under its temporary directory, whose path must stay short (108 bytes).
        scratch = tempfile.mkdtemp(prefix="fedcifar-ray-")
        port = free_ports(1, host)[0]
        state = cls.new_state(host=host, port=port, tls=False, auth=False, certs=None, env=ray.env(scratch))
        fed = cls(workdir, {**state, "simulation": True, "scratch": scratch})
        fed.save()
        try:
            fed.cli.write_config(fed.address, None)
            fed._start_superlink(None, timeout)
            fed.flwr("federation", "simulation-config", *ray.simulation_config(nodes))
        except BaseException:
            fed.down()
            raise
        return fed

    @property
    def simulated(self) -> bool:
        """True for a simulation SuperLink (`simulation`), False for a Deployment Engine one (`up`)."""
        return bool(self.state.get("simulation"))

    def down(self, grace: float = 5.0) -> set[int]:
        """Stop every process (see `ProcessGroup.down`) and remove a simulation's Ray directory."""
        stopped = super().down(grace)
        if scratch := self.state.get("scratch"):
            shutil.rmtree(scratch, ignore_errors=True)
        return stopped

    def _start(
        self, nodes: int, config: Callable[[int], NodeConfig] | None, database: str | Path | None, timeout: float
    ) -> None:
        config = config or (lambda i: f"partition-id={i} num-partitions={nodes}")
        if self.tls:
            hosts = dict.fromkeys([h for h in (self.host, LOOPBACK, "localhost") if client_host(h) == h])
            certs = make_certs(self.workdir / "certs", hosts)
            self.state["certs"] = {"ca": str(certs.ca), "cert": str(certs.cert), "key": str(certs.key)}
        self.cli.write_config(self.address, self.ca)
        self._start_superlink(database, timeout)
        keys = [make_node_key(self.workdir / "keys" / f"node{i}") for i in range(nodes)] if self.auth else []
        node_ids = self.register_keys([k.public for k in keys]) if self.auth else []
        for i in range(nodes):
            if self.auth:
                self.start_node(node_config=config(i), key=keys[i].private, node_id=node_ids[i])
            else:
                self.start_node(node_config=config(i))
        self.wait_online(node_ids if self.auth else nodes, timeout=timeout)

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _spawn(self, role: str, name: str, argv: list[str], **extra: object) -> dict:
        # Each server process gets its own Flower home: a SuperNode's ClientApp processes install
        # the app bundle there, and two nodes installing into one directory at once could race.
        flwr_home = self.workdir / "homes" / name
        flwr_home.mkdir(parents=True, exist_ok=True)
        env = child_env({**self.state["env"], "FLWR_HOME": str(flwr_home), MARKER_ENV: self.marker})
        return self.spawn(role, name, argv, env, **extra)

    def _start_superlink(self, database: str | Path | None, timeout: float) -> None:
        argv = ["flower-superlink", "--host", self.host, "--port", str(self.state["port"])]
        if self.tls:
            certs = self.state["certs"]
            argv += ["--ssl-ca-certfile", certs["ca"], "--ssl-certfile", certs["cert"], "--ssl-keyfile", certs["key"]]
        else:
            argv += ["--insecure"]
        argv += ["--disable-runtime-dependency-installation"]
        if self.simulated:
            argv += ["--simulation"]
        if self.auth:
            argv += ["--enable-supernode-auth"]
        if database is not None:
            argv += ["--database", str(Path(database).resolve())]
        record = self._spawn("superlink", "superlink", argv, port=self.state["port"])
        self.wait_ready(self.healthy, timeout, record, "answer on /health")

    def healthy(self) -> bool:
        """The SuperLink answers ``GET /health`` (over TLS verified against our CA, if on)."""
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=str(self.ca)) if self.tls else None
        try:
            with urllib.request.urlopen(f"{scheme}://{self.address}/health", timeout=2, context=context) as r:
                return r.status == 200
        except OSError:
            return False

    def start_node(
        self,
        *,
        node_config: NodeConfig = "",
        key: str | Path | None = None,
        node_id: int | None = None,
        root_certificates: str | Path | None = None,
    ) -> Node:
        """Start one SuperNode (without waiting for it): the next index, a fresh Runtime API port.

        `key` is its private key for SuperNode auth (registered or not: that is the caller's
        business; `node_id` records what registration returned). `root_certificates` overrides
        the CA it trusts (default: the federation's).
        """
        index = len(self.nodes)
        port = free_ports(1)[0]
        warm = self.state.get("clientapp") == "warm"
        program = [sys.executable, "-m", "fedcifar.flower.warm", "supernode"] if warm else ["flower-supernode"]
        argv = [*program, "--superlink", self.address, "--host", LOOPBACK, "--port", str(port)]
        if self.tls:
            argv += ["--root-certificates", str(Path(root_certificates or self.ca).resolve())]
        else:
            argv += ["--insecure"]
        if key is not None:
            argv += ["--auth-supernode-private-key", str(Path(key).resolve())]
        if not isinstance(node_config, str):
            node_config = format_node_config(node_config)
        if node_config:
            argv += ["--node-config", node_config]
        if warm:  # its SuperExec is ours (warm.py), started beside it, not Flower's
            argv += ["--isolation", "process"]
        record = self._spawn("supernode", f"supernode-{index}", argv, index=index, port=port, node_id=node_id)
        if warm:
            exec_argv = [sys.executable, "-m", "fedcifar.flower.warm", "--runtime-api-address", f"{LOOPBACK}:{port}"]
            exec_argv += ["--insecure", "--parent-pid", str(record["pid"])]
            self._spawn("superexec", f"superexec-{index}", exec_argv, index=index)
        return Node(index, record["pid"], port, Path(record["log"]), node_id)

    def wait_online(self, nodes: int | Iterable[int], timeout: float = 60.0) -> set[int]:
        """Wait until these node ids (or this many nodes) are online; fail early if a SuperNode exits."""
        want = nodes if isinstance(nodes, int) else set(nodes)
        ready = (lambda online: len(online) >= want) if isinstance(want, int) else (lambda online: want <= online)
        procs = self.state["processes"]
        if not isinstance(want, int):  # only the SuperLink and the awaited nodes must stay up
            procs = [p for p in procs if p["role"] == "superlink" or p.get("node_id") in want]
        deadline = time.monotonic() + timeout
        while True:
            self.check_running(procs, "all nodes were online")
            online = self.online()
            if ready(online):
                return online
            if time.monotonic() > deadline:
                logs = ", ".join(p["log"] for p in self.state["processes"])
                raise FederationError(
                    f"nodes online after {timeout:.0f} s: {sorted(online)}, wanted {want}; see {logs}"
                )
            time.sleep(0.5)

    # ---- the flwr CLI (control.py)

    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True):
        """Run ``flwr ARGS`` against this federation; with `check`, a `FederationError` unless it exits 0."""
        return self.cli.run(*args, timeout=timeout, check=check)

    def register_keys(self, public_keys: Iterable[str | Path]) -> list[int]:
        """Register SuperNode public keys (``flwr supernode register``); their node ids."""
        return self.cli.register_keys(public_keys)

    def supernodes(self) -> list[dict]:
        """The SuperLink's list of SuperNodes (``flwr supernode ls``): dicts with node-id, status, ..."""
        return self.cli.supernodes()

    def online(self) -> set[int]:
        """Ids of the SuperNodes the SuperLink reports online (connected and sending heartbeats)."""
        return self.cli.online()

    def run_status(self, run_id: int) -> dict:
        """``flwr ls --run-id ID``: status ("finished:completed", ...), status-details, times."""
        return self.cli.run_status(run_id)

    def submit(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, object] | None = None,
        *,
        stream: bool = True,
        timeout: float | None = 600.0,
        echo: Callable[[str], object] | None = None,
    ) -> RunResult:
        """``flwr run APP_DIR fedcifar``: see `FlwrCli.submit` (raises unless the run completed)."""
        return self.cli.submit(app_dir, run_config, stream=stream, timeout=timeout, echo=echo)
