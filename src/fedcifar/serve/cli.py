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
import math
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fedcifar.errors import UserError

if TYPE_CHECKING:
    from fedcifar.serve.trainer import Trainer

log = logging.getLogger("fedcifar.serve")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
AUTO_PRESET = "auto"  # --train-preset auto: the paper's run that fits the device (make run's default)
DEFAULT_MAX_PIXELS = 4096 * 4096  # fedcifar.serve.preprocess.DEFAULT_MAX_PIXELS (not imported: keeps the parser cheap)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the global model: upload page, JSON API, live training dashboard",
        description="Serve top-5 CIFAR-100 predictions at / and /api/predict, and a live dashboard at /dashboard.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="follow a training run: serve its latest model, reload each new round "
        "(default with --train-preset: runs/PRESET)",
    )
    source.add_argument("--model", metavar="FILE", help="serve one exported model_global.safetensors")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--data-dir", help="folder holding cifar-100-python/ for the label names (default: $FEDCIFAR_DATA_DIR)"
    )
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default: 10)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="most pixels decoded from one image (default: 4096x4096); larger uploads are refused from their header",
    )
    p.add_argument("--decode-workers", type=int, default=1, help="large images decoded at once (default: 1)")
    p.add_argument(
        "--decode-queue", type=int, default=4, help="large images that may wait for a decode; beyond, 503 (default: 4)"
    )
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 where native")
    p.add_argument("--max-batch", type=int, default=64, help="largest micro-batch (default: 64)")
    p.add_argument(
        "--batch-wait-ms", type=float, default=0.0, help="how long a lone request waits for company (default: 0)"
    )
    p.add_argument("--reload-interval", type=float, default=1.0, help="seconds between model file checks (> 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for inference (default: torch's choice)")
    p.add_argument(
        "--train-preset",
        metavar="PRESET",
        help="also run `fedcifar train --preset PRESET --out RUN_DIR --auto-resume` beside the server; "
        "Ctrl-C, SIGTERM or SIGHUP stop both, and training never outlives the server. "
        "auto: paper with a CUDA GPU, else paper-cpu (ResNet-20)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)


def resolve_train_preset(name: str) -> tuple[str, str | None]:
    """The preset ``--train-preset NAME`` trains, and the line to print when ``auto`` chose it.

    ``auto`` is the paper's federation on whatever this machine has: the paper's ResNet-18
    with a CUDA device, ResNet-20 (``paper-cpu``) without one, where ResNet-18 would take hours.
    """
    if name != AUTO_PRESET:
        return name, None
    import torch

    if torch.cuda.is_available():
        return "paper", "fedcifar: GPU found: the paper's federation with ResNet-18 (paper)"
    return "paper-cpu", (
        "fedcifar: no GPU: the paper's federation with ResNet-20 (paper-cpu); `make run PRESET=paper` for ResNet-18"
    )


def training_target(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    """The preset to train beside the server and the run directory to follow (either may be None).

    A run directory holds one config, so ``--train-preset`` without ``--run`` trains into
    ``runs/PRESET`` of the resolved preset: ``auto`` never mixes ``paper`` and ``paper-cpu``.
    """
    if args.train_preset and args.model:
        raise UserError("--train-preset needs --run RUN_DIR (the run directory to train into), not --model")
    if not (args.run or args.model or args.train_preset):
        raise UserError("serve needs --run RUN_DIR or --model FILE")
    if not args.train_preset:
        return None, Path(args.run) if args.run else None
    from fedcifar.config import PRESETS

    if args.train_preset != AUTO_PRESET and args.train_preset not in PRESETS:
        choices = ", ".join([AUTO_PRESET, *PRESETS])
        raise UserError(f"unknown --train-preset {args.train_preset!r}; choose one of: {choices}")
    preset, message = resolve_train_preset(args.train_preset)
    if message:
        print(message, file=sys.stderr, flush=True)
    return preset, Path(args.run) if args.run else Path("runs") / preset


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


def _settings(args: argparse.Namespace, run_dir: Path | None):
    from fedcifar.serve.settings import MB, ServeSettings

    if not (math.isfinite(args.max_upload_mb) and 0 < args.max_upload_mb <= 1024):
        raise UserError(f"--max-upload-mb must be > 0 and <= 1024, got {args.max_upload_mb}")
    try:
        return ServeSettings(
            run_dir=run_dir,
            model_path=Path(args.model) if args.model else None,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            max_upload_bytes=int(args.max_upload_mb * MB),
            max_pixels=args.max_pixels,
            decode_workers=args.decode_workers,
            decode_queue=args.decode_queue,
            precision=args.precision,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            reload_interval=args.reload_interval,
        )
    except ValueError as exc:
        option = {
            "max pixels": "--max-pixels",
            "max batch": "--max-batch",
            "decode workers": "--decode-workers",
            "decode queue": "--decode-queue",
            "batch wait": "--batch-wait-ms",
            "reload interval": "--reload-interval",
        }
        text = str(exc)
        for name, flag in option.items():
            text = text.replace(name, flag, 1) if text.startswith(name) else text
        raise UserError(text) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fedcifar.serve.labels import read_fine_labels
    from fedcifar.serve.main import create_app
    from fedcifar.serve.predictor import Predictor, inference_runtime
    from fedcifar.serve.trainer import Trainer

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    preset, run_dir = training_target(args)
    settings = _settings(args, run_dir)
    try:
        runtime = inference_runtime(settings.precision, settings.channels_last)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    labels = read_fine_labels(settings.data_dir)  # DataError: one line
    predictor = Predictor(runtime, num_labels=len(labels))
    preloaded = predictor.load(settings.model_path) if settings.model_path else None  # CheckpointError: one line
    sock = listen_socket(args.host, args.port)

    trainer = Trainer(preset, settings.run_dir, args.data_dir) if preset else None
    app = create_app(replace(settings, labels=labels), preloaded, trainer.status if trainer else None)
    config = uvicorn.Config(
        app,
        log_config=log_config(),
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"fedcifar: serving on http://{shown}:{args.port}/ (dashboard: /dashboard, API docs: /docs)", file=sys.stderr)
    return _serve_beside(server, sock, trainer, settings.run_dir)


def _serve_beside(server, sock: socket.socket, trainer: Trainer | None, run_dir: Path | None) -> int:
    """Run the web server (and the trainer beside it, if any) until a signal stops it; the exit code.

    SIGINT, SIGTERM and SIGHUP all stop the server gracefully, and then the trainer; a second
    one while training winds down stops it at once. (uvicorn handles SIGINT and SIGTERM while
    it runs and re-raises them when it returns; our handler takes them then, instead of the
    default action that would kill this process before the trainer is stopped.) A trainer that
    fails leaves the server running; the exit code is then 1.
    """

    def on_signal(signum: int, frame) -> None:
        if trainer is not None and trainer.stopping:
            trainer.hurry()
        server.should_exit = True

    # Also gives the trainer the default disposition of SIGINT, which a process started in the
    # background by a non-interactive shell (CI, `make ... &`) would otherwise inherit as ignored.
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        if trainer is not None:
            trainer.start()
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    finally:
        if trainer is not None:
            trainer.stop()
        sock.close()
    if trainer is not None and trainer.failed:
        print(f"fedcifar: training had failed: {trainer.status.detail or 'see above'}", file=sys.stderr)
        return 1
    if trainer is not None:
        print(f"fedcifar: stopped; {run_dir} keeps its last complete round (run again to resume)", file=sys.stderr)
    return 0
