"""``fedcifar serve``: run the app with uvicorn, optionally with a training run beside it.

Everything that can fail for a user's reason (a missing or corrupt ``--model``, missing label
names, a port in use) is checked before the server starts, and raised as one line for
``fedcifar.cli.main`` to print. Heavy imports happen inside :func:`cmd_serve`, so building
the parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

from fedcifar.errors import UserError

log = logging.getLogger("fedcifar.serve")

INTERRUPTED = {130, -signal.SIGINT, -signal.SIGTERM}  # how a trainer stopped by Ctrl-C or TERM exits


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the global model: upload page, JSON API, live training dashboard",
        description="Serve top-5 CIFAR-100 predictions at / and /api/predict, and a live dashboard at /dashboard.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run", metavar="RUN_DIR", help="follow a training run: serve its latest model, reload each new round"
    )
    source.add_argument("--model", metavar="FILE", help="serve one exported model_global.safetensors")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--data-dir", help="folder holding cifar-100-python/ for the label names (default: $FEDCIFAR_DATA_DIR)"
    )
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default: 10)")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="largest declared image size in pixels")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 where native")
    p.add_argument("--max-batch", type=int, default=64, help="largest micro-batch (default: 64)")
    p.add_argument(
        "--batch-wait-ms", type=float, default=0.0, help="how long a lone request waits for company (default: 0)"
    )
    p.add_argument("--reload-interval", type=float, default=1.0, help="seconds between model file checks")
    p.add_argument("--threads", type=int, default=0, help="torch threads for inference (default: torch's choice)")
    p.add_argument(
        "--train-preset",
        metavar="PRESET",
        help="also run `fedcifar train --preset PRESET --out RUN_DIR --auto-resume` beside the server; "
        "Ctrl-C stops both (needs --run)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind now, so a port in use is a one-line error rather than a log line after start-up."""

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def log_config(level: str = "info") -> dict:
    from uvicorn.config import LOGGING_CONFIG

    config = {**LOGGING_CONFIG, "loggers": dict(LOGGING_CONFIG["loggers"])}
    config["loggers"]["fedcifar"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


class Trainer:
    """``fedcifar train`` as a child process beside the server (``make run``)."""

    def __init__(self, preset: str, run_dir: Path, data_dir: str | None) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "fedcifar",
            "train",
            "--preset",
            preset,
            "--out",
            str(run_dir),
            "--auto-resume",
        ]
        if data_dir:
            self.cmd += ["--data-dir", data_dir]
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    def start(self, on_failure) -> None:
        print(f"fedcifar: training beside the server: {' '.join(self.cmd[2:])}", file=sys.stderr, flush=True)
        # Its own session: a terminal's Ctrl-C reaches the server only, which then stops training
        # with exactly one SIGINT. (Two would interrupt the trainer's own clean shutdown.)
        self.proc = subprocess.Popen(self.cmd, start_new_session=True)
        threading.Thread(target=self._watch, args=(on_failure,), name="fedcifar-trainer-watch", daemon=True).start()

    def _watch(self, on_failure) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        if self.stopping or code in INTERRUPTED:
            return
        if code == 0:
            log.info("fedcifar serve: training finished; still serving the final model")
        else:
            log.error("fedcifar serve: training exited with code %s; stopping the server", code)
            on_failure()

    def stop(self, grace: float = 300.0) -> int | None:
        """Stop training as Ctrl-C would (it keeps its last complete round) and wait for it.

        Training finishes the client updates in flight before it exits; a second Ctrl-C while
        waiting ends it at once with SIGTERM (the checkpoint on disk is complete either way).
        """
        if self.proc is None:
            return None
        self.stopping = True
        if self.proc.poll() is not None:
            return self.proc.returncode
        print(
            "fedcifar: stopping training: it finishes the client updates in flight and keeps its last complete"
            " round (Ctrl-C again to stop it now)",
            file=sys.stderr,
            flush=True,
        )
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()


def _settings(args: argparse.Namespace):
    from fedcifar.serve.settings import MB, ServeSettings

    try:
        return ServeSettings(
            run_dir=Path(args.run) if args.run else None,
            model_path=Path(args.model) if args.model else None,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            max_upload_bytes=int(args.max_upload_mb * MB),
            max_pixels=args.max_pixels,
            precision=args.precision,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            reload_interval=args.reload_interval,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fedcifar.serve.labels import read_fine_labels
    from fedcifar.serve.main import create_app
    from fedcifar.serve.predictor import Predictor, inference_runtime

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.train_preset and not args.run:
        raise UserError("--train-preset needs --run RUN_DIR (the run directory to train into)")
    settings = _settings(args)
    try:
        runtime = inference_runtime(settings.precision, settings.channels_last)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    labels = read_fine_labels(settings.data_dir)  # DataError: one line
    preloaded = Predictor(runtime).load(settings.model_path) if settings.model_path else None  # CheckpointError
    sock = listen_socket(args.host, args.port)

    app = create_app(replace(settings, labels=labels), preloaded)
    config = uvicorn.Config(
        app,
        log_config=log_config(),
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    trainer = Trainer(args.train_preset, settings.run_dir, args.data_dir) if args.train_preset else None
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"fedcifar: serving on http://{shown}:{args.port}/ (dashboard: /dashboard, API docs: /docs)", file=sys.stderr)
    return _serve_beside(server, sock, trainer, settings.run_dir)


def _serve_beside(server, sock: socket.socket, trainer: Trainer | None, run_dir: Path | None) -> int:
    """Run the web server (and the trainer beside it, if any) until either stops; the exit code."""
    failed = threading.Event()

    def on_trainer_failure() -> None:
        failed.set()
        server.should_exit = True

    # A process started in the background by a non-interactive shell (CI, `make ... &`) inherits
    # SIGINT as ignored, and so would the trainer, which then could not be stopped with it.
    # Handle it here so that the trainer starts with the default disposition (KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if trainer is not None:
            trainer.start(on_trainer_failure)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises a Ctrl-C after its clean shutdown
            server.run(sockets=[sock])
    finally:
        code = trainer.stop() if trainer is not None else None
        sock.close()
    if failed.is_set():
        return int(code or 1) if code not in INTERRUPTED else 1
    if trainer is not None:
        print(f"fedcifar: stopped; {run_dir} keeps its last complete round (run again to resume)", file=sys.stderr)
    return 0
