"""``fedcifar federation``: fedcifar's round loop on a Flower federation on this machine.

::

    fedcifar federation up FED --nodes 8 --preset paper-cpu --set clients_per_round=4
    fedcifar federation run FED --preset paper-cpu --set clients_per_round=4 --out runs/flower
    fedcifar federation down FED
    fedcifar federation simulate --preset paper-cpu --set num_clients=8 --set clients_per_round=4 --out runs/sim

``up`` cuts CIFAR-100's training set into one shard per client (``FED/shards``, the config's
partition with ``num_clients`` = the number of nodes), then starts one SuperLink and one
SuperNode per client (TLS and SuperNode authentication on), on 127.0.0.1 unless ``--host``.
``run`` submits fedcifar's Flower app and streams the server's log; its ``--out`` is an
ordinary run directory. ``down`` stops every process ``up`` started, by pid (`deploy.py`).
``simulate`` runs the same apps on Flower's Simulation Runtime instead: a simulation SuperLink
on 127.0.0.1, one virtual SuperNode per client in Ray actors (a private Ray instance, or a Ray
cluster with ``--ray-address``), the shards in a work folder; it stops everything at the end.
Errors are one line (`UserError`); heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from fedcifar.errors import UserError

APP_DIR = Path(__file__).parent / "app"  # the Flower app bundle `flwr run` submits (a pyproject.toml)
SHARDS_DIR = "shards"
SHARDS_FILE = "shards.json"  # the config the shards were cut with (`up`), checked by `run`


def add_federation_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "federation",
        help="train on a Flower federation on this machine: certs, up, run, status, down",
        description="A Flower SuperLink and one SuperNode per client on this machine (Deployment Engine).",
    )
    cmds = p.add_subparsers(dest="federation_command", required=True, metavar="{certs,up,run,simulate,status,down}")
    certs = cmds.add_parser("certs", help="write a CA and a server certificate signed by it")
    certs.add_argument("dir", metavar="DIR", help="folder for ca.pem, server.pem and server.key")
    certs.add_argument(
        "--host",
        action="append",
        metavar="NAME",
        help="address or DNS name the certificate covers (repeatable; default: 127.0.0.1 and localhost)",
    )
    certs.set_defaults(func=cmd_certs)
    _add_up_parser(cmds)
    _add_run_parser(cmds)
    _add_simulate_parser(cmds)
    for name, func, text in (
        ("status", cmd_status, "list the federation's processes and nodes"),
        ("down", cmd_down, "stop every process `up` started (by pid)"),
    ):
        cmd = cmds.add_parser(name, help=text)
        cmd.add_argument("dir", metavar="DIR", help="the federation's folder (as given to `up`)")
        cmd.set_defaults(func=func)


def _add_config_args(p: argparse.ArgumentParser, preset_default: str | None) -> None:
    from fedcifar.config import PRESETS

    default = f" (default: {preset_default})" if preset_default else ""
    p.add_argument(
        "--preset", default=preset_default, required=not preset_default, help=f"one of: {', '.join(PRESETS)}{default}"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: $FEDCIFAR_DATA_DIR)")


def _add_up_parser(cmds: argparse._SubParsersAction) -> None:
    up = cmds.add_parser("up", help="cut the client shards, start a SuperLink and N SuperNodes, wait for them")
    up.add_argument("dir", metavar="DIR", help="folder for shards, certificates, keys, logs and pids")
    up.add_argument("--nodes", type=int, required=True, help="SuperNodes to start: one per client (num_clients)")
    up.add_argument("--insecure", action="store_true", help="no TLS (and so no SuperNode authentication)")
    up.add_argument("--no-auth", action="store_true", help="admit any SuperNode (TLS stays on)")
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the SuperLink listens on (default: 127.0.0.1; the SuperNodes' own ports stay on 127.0.0.1, "
        "and the certificate covers this address, 127.0.0.1 and localhost)",
    )
    up.add_argument(
        "--clientapp",
        choices=["warm", "fresh"],
        default="warm",
        help="warm (default): each message's ClientApp is forked from a process that imported torch and fedcifar "
        "once; fresh: Flower's own new flwr-clientapp process per message (seconds of imports each)",
    )
    _add_config_args(up, "paper")
    up.set_defaults(func=cmd_up)


def _add_run_parser(cmds: argparse._SubParsersAction) -> None:
    run = cmds.add_parser("run", help="train on the federation; exit 0 only if the run completed")
    run.add_argument("dir", metavar="DIR", help="the federation's folder (as given to `up`)")
    _add_config_args(run, None)
    run.add_argument("--out", required=True, help="run directory (config.yaml, metrics.csv, checkpoint, ...)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete round")
    run.set_defaults(func=cmd_run)


def _add_simulate_parser(cmds: argparse._SubParsersAction) -> None:
    sim = cmds.add_parser(
        "simulate",
        help="train with the same apps on Flower's Simulation Runtime (Ray), here or on a Ray cluster",
        description="Start a simulation SuperLink on 127.0.0.1, submit fedcifar's Flower app to it with one "
        "virtual SuperNode per client (Ray actors), stream the run to its end, stop everything.",
    )
    _add_config_args(sim, None)
    sim.add_argument("--out", required=True, help="run directory (config.yaml, metrics.csv, checkpoint, ...)")
    sim.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete round")
    sim.add_argument("--nodes", type=int, help="virtual SuperNodes: one per client (default: the config's num_clients)")
    sim.add_argument("--cpus-per-client", type=int, default=1, help="CPUs of each Ray actor (default: 1)")
    sim.add_argument("--gpus-per-client", type=float, default=0.0, help="GPU fraction of each Ray actor (default: 0)")
    sim.add_argument("--ray-cpus", type=int, help="CPUs of the private Ray instance (default: every core here)")
    sim.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run on this Ray cluster (`ray start --head` on it; default: a private Ray instance on 127.0.0.1)",
    )
    sim.add_argument(
        "--workdir",
        help="folder for the client shards, the SuperLink's logs and Flower home (kept; default: a temporary "
        "folder, removed after a completed run). On a Ray cluster every node must see it at the same path",
    )
    sim.set_defaults(func=cmd_simulate)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """A `FederationError` (which may end in a log excerpt) as a one-line `UserError`."""
    from fedcifar.flower.group import FederationError

    try:
        yield
    except FederationError as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from None


def _need_flower() -> None:
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise UserError("Flower is not installed: pip install 'fedcifar[flower]'")


def federation_config(preset: str, sets: list[str] | None, nodes: int):
    """(Config, overrides) for a federation of `nodes` clients: ``num_clients`` is the node count."""
    from fedcifar.config import build_config, parse_overrides

    overrides = parse_overrides(sets or [])
    given = overrides.get("num_clients", str(nodes)).strip()
    if given != str(nodes):
        raise UserError(f"num_clients={given}, but the federation has {nodes} SuperNodes (one client each)")
    for key, value in overrides.items():
        if not value.strip() or any(c.isspace() for c in value.strip()):
            raise UserError(f"--set {key}={value!r}: a federation's values cannot be empty or hold spaces")
    overrides["num_clients"] = str(nodes)
    cfg = build_config(preset, None, overrides)
    if cfg.val_size:
        raise UserError(
            "val_size > 0 is for the simulator (fedcifar train/tune): a federation's nodes hold whole shards"
        )
    return cfg, {k: v.strip() for k, v in overrides.items()}


def partition_keys(cfg) -> dict[str, object]:
    """The config keys the client shards depend on."""
    keys = ["num_clients", "partitioner", "seed"]
    keys += {"dirichlet": ["alpha", "min_partition_size"], "shards": ["shards_per_client"]}.get(cfg.partitioner, [])
    return {k: getattr(cfg, k) for k in keys}


def check_partition(shards: dict[str, object], cfg) -> None:
    """A `UserError` unless `cfg` cuts the same shards as the recorded partition keys."""
    wanted = partition_keys(cfg)
    differ = {k: v for k, v in wanted.items() if shards.get(k) != v}
    if differ:
        cut = " ".join(f"{k}={shards.get(k)}" for k in differ)
        asked = " ".join(f"{k}={v}" for k, v in differ.items())
        raise UserError(f"the nodes' shards were cut with {cut}, this run has {asked}: use those, or down and up again")


def cmd_certs(args: argparse.Namespace) -> int:
    _need_flower()
    from fedcifar.flower.certs import LOCAL_HOSTS, make_certs

    certs = make_certs(args.dir, args.host or LOCAL_HOSTS)
    print(f"wrote {certs.ca}, {certs.cert} and {certs.key} (for {', '.join(args.host or LOCAL_HOSTS)})")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        raise UserError(f"--nodes must be >= 1, got {args.nodes}")
    _need_flower()
    from fedcifar.flower.deploy import STATE_FILE, Federation

    workdir = Path(args.dir).resolve()
    with _one_line_errors():
        if (workdir / STATE_FILE).exists() and Federation.attach(workdir).pids():
            raise UserError(
                f"a federation is already running from {workdir}; stop it: fedcifar federation down {args.dir}"
            )
    cfg, _ = federation_config(args.preset, args.set, args.nodes)
    shards = _export_shards(cfg, args.data_dir, workdir)
    try:
        with _one_line_errors():
            fed = Federation.up(
                workdir,
                args.nodes,
                tls=not args.insecure,
                auth=not (args.insecure or args.no_auth),
                node_config=lambda i: {"partition-id": i, "data-path": str(shards)},
                host=args.host,
                clientapp=args.clientapp,
            )
    except KeyboardInterrupt:
        print("fedcifar: interrupted; stopped every process `up` had started", file=sys.stderr)
        return 130
    _print_up(fed, args)
    return 0


def _export_shards(cfg, data_dir: str | None, workdir: Path) -> Path:
    """Cut the training set by `cfg`'s partition into ``workdir/shards``; record the keys used."""
    from fedcifar.data.cifar100 import load_cifar100
    from fedcifar.data.shards import export_shards
    from fedcifar.federation import partition_for

    data = load_cifar100(data_dir, download=False)
    partition = partition_for(cfg, data.train_y.numpy())
    shards = workdir / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    for stale in shards.glob("client-*.safetensors"):  # a previous `up` may have had more nodes
        stale.unlink()
    export_shards(data.train_x, data.train_y, partition, shards)
    (workdir / SHARDS_FILE).write_text(json.dumps(partition_keys(cfg), indent=2) + "\n")
    return shards


def _print_up(fed, args: argparse.Namespace) -> None:
    security = "TLS, SuperNode auth" if fed.auth else ("TLS, no SuperNode auth" if fed.tls else "no TLS")
    print(f"SuperLink {fed.address} ({security}) listening on {fed.host}; {len(fed.nodes)} SuperNodes online")
    print(f"  shards: {fed.workdir / SHARDS_DIR} (one client per node, partition keys in {SHARDS_FILE})")
    print(f"  logs:   {fed.workdir / 'logs'}")
    pids = " ".join(f"{p['name']}={p['pid']}" for p in fed.state["processes"])
    print(f"  pids:   {fed.workdir / 'federation.json'} ({pids})")
    print(f"  flwr:   FLWR_HOME={fed.flwr_home} flwr ls fedcifar")
    sets = "".join(f" --set {s}" for s in args.set or [])
    print(f"train: fedcifar federation run {args.dir} --preset {args.preset}{sets} --out RUN_DIR")
    print(f"stop:  fedcifar federation down {args.dir}")


def cmd_run(args: argparse.Namespace) -> int:
    _need_flower()
    from fedcifar.flower.deploy import Federation

    with _one_line_errors():
        fed = Federation.attach(args.dir)
    if not fed.healthy():
        raise UserError(f"the federation in {args.dir} is not running; start it with: fedcifar federation up")
    shards_file = fed.workdir / SHARDS_FILE
    shards = json.loads(shards_file.read_text()) if shards_file.is_file() else {"num_clients": len(fed.nodes)}
    cfg, overrides = federation_config(args.preset, args.set, int(shards["num_clients"]))
    if shards_file.is_file():
        check_partition(shards, cfg)
    out = Path(args.out).resolve()
    _check_run_dir(out, cfg, args.resume)
    with _one_line_errors():
        result = fed.submit(APP_DIR, run_config(args, out, overrides), timeout=None, echo=_echo)
    print(f"run {result.run_id}: {result.status} -> {out}")
    return 0


def run_config(args: argparse.Namespace, out: Path, overrides: dict[str, str], **extra: str) -> dict[str, object]:
    """The ServerApp's run config (keys of the app's ``[tool.flwr.app.config]``)."""
    from fedcifar.data.cifar100 import resolve_data_dir

    return {
        "preset": args.preset,
        "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()),
        "out": str(out),
        "resume": bool(args.resume),
        "data-dir": str(resolve_data_dir(args.data_dir).resolve()),
        **extra,
    }


def _echo(line: str) -> None:
    print(line, end="", flush=True)


def cmd_simulate(args: argparse.Namespace) -> int:
    _need_flower()
    import shutil
    import tempfile

    from fedcifar.config import build_config, parse_overrides
    from fedcifar.flower.deploy import STATE_FILE, Federation
    from fedcifar.flower.simulation import RayOptions

    nodes = args.nodes or build_config(args.preset, None, parse_overrides(args.set or [])).num_clients
    if nodes < 1:
        raise UserError(f"--nodes must be >= 1, got {nodes}")
    try:
        ray = RayOptions(args.cpus_per_client, args.gpus_per_client, args.ray_cpus, args.ray_address)
    except ValueError as exc:
        raise UserError(str(exc).replace("num_cpus", "--ray-cpus").replace("_per_", "-per-")) from None
    cfg, overrides = federation_config(args.preset, args.set, nodes)
    out = Path(args.out).resolve()
    _check_run_dir(out, cfg, args.resume)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedcifar-sim-")).resolve()
    with _one_line_errors():
        if (workdir / STATE_FILE).exists() and Federation.attach(workdir).pids():
            raise UserError(f"a federation is running from {workdir}; stop it: fedcifar federation down {workdir}")
    shards = _export_shards(cfg, args.data_dir, workdir)
    config = run_config(args, out, overrides, **{"data-path": str(shards)})
    try:
        with _one_line_errors(), Federation.simulation(workdir, nodes, ray=ray) as sim:
            result = sim.submit(APP_DIR, config, timeout=None, echo=_echo)
    except UserError as exc:
        raise UserError(f"{exc} (work folder kept: {workdir})") from None
    except KeyboardInterrupt:
        print(f"fedcifar: interrupted; stopped the simulation (work folder: {workdir})", file=sys.stderr)
        return 130
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"run {result.run_id}: {result.status} -> {out}")
    return 0


def _check_run_dir(out: Path, cfg, resume: bool) -> None:
    """`--out` holds no run (or, with `--resume`, a run of this config but for `rounds`)."""
    from fedcifar.config import config_from_dict
    from fedcifar.track.checkpoint import CHECKPOINT_FILE, load_checkpoint

    exists = (out / CHECKPOINT_FILE).exists()
    if exists and not resume:
        raise UserError(f"{out} already holds a run; continue it with --resume or pick another --out")
    if resume and not exists:
        raise UserError(f"{out} holds no checkpoint to resume")
    if resume and config_from_dict(load_checkpoint(out).meta["config"]).replace(rounds=cfg.rounds) != cfg:
        raise UserError("a resumed run keeps its config: --preset and --set must be as before (only rounds may change)")


def cmd_status(args: argparse.Namespace) -> int:
    from fedcifar.flower.deploy import Federation
    from fedcifar.flower.procs import alive

    with _one_line_errors():
        fed = Federation.attach(args.dir)
        for p in fed.state["processes"]:
            state = "alive" if alive(p["pid"], p.get("start")) else "gone"
            print(f"{p['name']:>14} pid {p['pid']:>7} {state:>5}  {p['log']}")
        if fed.healthy():
            for node in fed.supernodes():
                print(f"node {node['node-id']}: {node['status']}")
        else:
            print(f"SuperLink {fed.address}: not answering")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from fedcifar.flower.deploy import Federation

    with _one_line_errors():
        stopped = Federation.attach(args.dir).down()
    print(f"stopped {len(stopped)} processes of the federation in {args.dir}")
    return 0
