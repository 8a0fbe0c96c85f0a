"""A SuperExec for one SuperNode whose ClientApp processes start warm.

Flower 1.41's SuperNode runs every message in a fresh ``flwr-clientapp`` process (its SuperExec
starts one per task, with ``subprocess.Popen``), and that process spends seconds importing
torch, torchvision, Flower and fedcifar before it can train: on two busy cores, more than the
training of a small client. Flower has no long-lived ClientApp (its ``--isolation process``
only means the operator starts the SuperExec; warm executor pools exist for Kubernetes and
other task types). So ``fedcifar federation up`` can start each SuperNode with ``--isolation
process`` and this SuperExec beside it:

    python -m fedcifar.flower.warm --runtime-api-address 127.0.0.1:PORT --insecure --parent-pid NODE_PID

It imports the ClientApp and Flower's ClientApp runtime once, then runs Flower's own SuperExec
loop (``run_superexec``: ask the node for a task, launch it) with one change: a task is launched
by forking this process, and the child runs Flower's own ``run_clientapp``. Each message still
gets a process of its own (a crash or a leak ends with it; Flower's task protocol, tokens,
context and heartbeats are unchanged); it just starts with everything imported. Nothing
numeric runs here before a fork, so no thread pool is copied into the children.

Two waits are Flower's constants, not settings, and cost more than the training of a round on
this machine's benchmark; the processes fedcifar starts shorten them (`quick_pulls`,
``supernode``):

* A message is announced before its arrays (5 MiB chunks) are uploaded, and a receiver that asks
  for a chunk too early backs off 1, 2, 4, 8, then 10 s: the SuperNode pulling from the SuperLink,
  the ClientApp pulling from its SuperNode (a warm ClientApp asks at once), the ServerApp pulling
  a reply. Here the retries come every 0.05 s doubling to 0.5 s, with Flower's total patience.
* An idle SuperNode asks the SuperLink for messages every 3 s, and waits for its ClientApp's
  reply in steps of 0.5 s. ``python -m fedcifar.flower.warm supernode ARGS`` is
  ``flower-supernode ARGS`` with both at most ``NODE_POLL`` seconds.

All three changes (the executor, the pull retries, the SuperNode's sleeps) patch Flower's
internals, so each first checks that the installed Flower is one of ``FLOWER_VERSIONS``, which
they were written for and read against, and that the patched symbol is there; otherwise it raises
`FlowerInternalsError`, naming both, rather than run with the patch silently missing.
With ``--clientapp fresh`` the nodes are Flower's own; the ServerApp's `quick_pulls` still checks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import signal
import sys
import time
import traceback

POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's SuperExec reads it (default 1 s)
TASK_POLL = 0.1  # s between this SuperExec's task polls (a local HTTP call to its own SuperNode)
NODE_POLL = 0.2  # s: an idle SuperNode's poll of the SuperLink (Flower: 3), and its reply wait (0.5)
# Flower: 1 s doubling to 10 s, 500 tries; here the same total patience (its max_time, 2 h) governs.
PULL_RETRY = {"initial_backoff": 0.05, "backoff_cap": 0.5, "max_tries_per_object": 20_000}
# The Flower releases whose internals the patches here were written for and read against. Add one
# only after reading its start_client_internal, run_superexec, inflatable_utils and run_clientapp.
FLOWER_VERSIONS = ("1.41.0",)


class FlowerInternalsError(RuntimeError):
    """The installed Flower is not one whose internals this module patches, or lacks a patched symbol."""


def check_patch(symbol: str, present: bool) -> None:
    """Raise `FlowerInternalsError` unless this Flower is one of `FLOWER_VERSIONS` and has `symbol`."""
    version = importlib.metadata.version("flwr")
    if version not in FLOWER_VERSIONS:
        raise FlowerInternalsError(
            f"fedcifar.flower.warm patches {symbol}, written for flwr {' or '.join(FLOWER_VERSIONS)}, "
            f"but flwr {version} is installed: install flwr=={FLOWER_VERSIONS[-1]} (the [flower] extra), "
            "or check the patch against this Flower and add it to FLOWER_VERSIONS"
        )
    if not present:
        raise FlowerInternalsError(f"flwr {version} has no {symbol}, which fedcifar.flower.warm patches")


def _patch(module: object, name: str, value: object) -> None:
    """``module.name = value``, after `check_patch`."""
    check_patch(f"{module.__name__}.{name}", hasattr(module, name))
    setattr(module, name, value)


def quick_pulls() -> None:
    """In this process, retry a pull of a not-yet-uploaded chunk within 0.5 s (Flower: up to 10 s)."""
    from flwr.supercore.inflatable import inflatable_utils

    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        symbol = f"the keyword defaults {sorted(PULL_RETRY)} of {fn.__module__}.{fn.__qualname__}"
        check_patch(symbol, set(PULL_RETRY) <= set(fn.__kwdefaults__ or {}))
        fn.__kwdefaults__.update(PULL_RETRY)


class _ShortSleeps:
    """``time`` for one Flower module, with every sleep cut to at most ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str):
        return getattr(time, name)


def run_supernode(argv: list[str], poll: float = NODE_POLL) -> None:
    """``flower-supernode ARGV``, with quick pulls and its idle and reply polls at most `poll` s."""
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    quick_pulls()
    _patch(start_client_internal, "time", _ShortSleeps(poll))  # its loop's only sleeps: 3 s idle, 0.5 s reply wait
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def preload() -> None:
    """Import what every ClientApp process needs (torch, torchvision, Flower, fedcifar)."""
    import flwr.supernode.runtime.run_clientapp  # noqa: F401

    import fedcifar.flower.client_app  # noqa: F401


class ForkExecutor:
    """Flower's ``Executor`` protocol, launching each ClientApp task in a child of this process."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types, *, insecure=False, root_certificates_path=None):
        return supported_task_types, set()

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure=False, root_certificates_path=None):
        return None

    def launch(self, spec):
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult, SubprocessExecutor

        if spec.task_type != TaskType.CLIENT_APP:  # not ours to speed up: Flower's own way
            return SubprocessExecutor().launch(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_task(spec)  # never returns
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the children that have ended (called by Flower's loop between polls)."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.children.discard(pid)

    def close(self) -> None:
        self.reconcile()


def _run_task(spec) -> None:
    """In the forked child: Flower's ClientApp process for one task, then exit with its code."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from flwr.supercore.exit.exit_handler import registered_exit_handlers
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        registered_exit_handlers.clear()  # the parent's (close its HTTP client, ...) are not the child's
        quick_pulls()
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # run_clientapp ends with flwr_exit -> sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["supernode"]:
        run_supernode(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m fedcifar.flower.warm", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API")
    parser.add_argument("--root-certificates", help="CA of the Runtime API's certificate (if it has TLS)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) ends")
    parser.add_argument("--poll", type=float, help=f"s between task polls (default: ${POLL_ENV}, else {TASK_POLL})")
    args = parser.parse_args(argv)
    if args.poll is not None or POLL_ENV not in os.environ:
        os.environ[POLL_ENV] = str(args.poll or TASK_POLL)
    preload()
    superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")
    _patch(superexec, "get_executor", lambda *_a, **_k: ForkExecutor())  # the one change to Flower's SuperExec
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
