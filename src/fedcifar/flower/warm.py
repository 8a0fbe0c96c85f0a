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
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import traceback

POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's SuperExec reads it (default 1 s)


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
    parser = argparse.ArgumentParser(prog="python -m fedcifar.flower.warm", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API")
    parser.add_argument("--root-certificates", help="CA of the Runtime API's certificate (if it has TLS)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) ends")
    parser.add_argument("--poll", type=float, help=f"seconds between task polls (sets {POLL_ENV}; Flower's default 1)")
    args = parser.parse_args(argv)
    if args.poll is not None:
        os.environ[POLL_ENV] = str(args.poll)
    preload()
    superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")
    superexec.get_executor = lambda *_a, **_k: ForkExecutor()  # the one change to Flower's SuperExec
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
