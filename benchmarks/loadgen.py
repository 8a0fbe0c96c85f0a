"""Load test on loopback: fedcifar's app against the naive per-request fp32 endpoint.

Starts each server as its own process, then drives it with N concurrent clients, each a
keep-alive HTTP/1.1 connection that posts a CIFAR-100 test image (PNG, 32x32) as soon as the
previous answer arrives (a closed loop). Reports p50 and p99 latency and requests per second
after a warm-up, writes JSON and prints a markdown table.

The client is a few lines of raw asyncio so that it costs the 2 shared cores as little as
possible; both servers are measured with the same client on the same machine.

    python benchmarks/loadgen.py [--model RUN/model_global.safetensors] [--duration 15] [--out FILE]

Without --model, an untrained ResNet-18 is exported to a temp dir: speed does not depend on
the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cell:
    server: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None
    load_before: float  # 1-minute load average when the cell started: other work on the 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(n: int) -> list[bytes]:
    """n CIFAR-100 test images as PNG files (random pixels if the dataset is not here)."""
    try:
        from fedcifar.data.cifar100 import load_cifar100

        pixels = load_cifar100(download=False).test_x[:n].permute(0, 2, 3, 1).numpy()
    except Exception:
        pixels = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    out = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def http_request(path: str, port: int, png: bytes) -> bytes:
    boundary = "fedcifarloadgen"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="img.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = next(int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return status


async def closed_loop(port: int, requests: list[bytes], concurrency: int, warmup: float, duration: float):
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors = 0

    async def client(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while (t0 := time.perf_counter()) < stop_at:
                writer.write(requests[i % len(requests)])
                i += concurrency
                await writer.drain()
                status = await read_response(reader)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if status == 200:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return latencies, errors, time.perf_counter() - measure_from


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Server:
    def __init__(self, name: str, cmd: list[str], path: str, port: int) -> None:
        self.name, self.path, self.port = name, path, port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server process
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise SystemExit(f"{name} did not start:\n{self.log.read().decode()[-2000:]}")
            time.sleep(0.3)

    def mean_batch(self) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/model", timeout=5) as r:
                return json.loads(r.read()).get("mean_batch")
        except OSError:
            return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def start_servers(model: Path, app_args: list[str]) -> dict[str, tuple[str, list[str], str, int]]:
    """name, command, predict path and port of each server, by key."""
    py = sys.executable
    app_port, naive_port = free_port(), free_port()
    return {
        "app": (
            "fedcifar (micro-batched, bf16 where native)",
            [py, "-m", "fedcifar", "serve", "--model", str(model), "--port", str(app_port), *app_args],
            "/api/predict",
            app_port,
        ),
        "naive": (
            "naive per-request fp32 (paper)",
            [
                py,
                str(ROOT / "benchmarks" / "naive_app.py"),
                "--model",
                str(model.with_suffix(".pth")),
                "--port",
                str(naive_port),
            ],
            "/predict",
            naive_port,
        ),
    }


def markdown(cells: list[Cell]) -> str:
    lines = [
        "| server | clients | req/s | p50 ms | p99 ms | mean batch | load avg before |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        batch = f"{c.mean_batch:.1f}" if c.mean_batch else "1 (none)"
        lines.append(
            f"| {c.server} | {c.concurrency} | {c.req_per_s:.1f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {batch} "
            f"| {c.load_before:.2f} |"
        )
    return "\n".join(lines)


def write_report(args: argparse.Namespace, key: str, cells: list) -> None:
    """``args.out``: the machine, the settings and the measured cells, as JSON (written atomically)."""

    doc = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        key: [asdict(c) for c in cells],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(doc, indent=2))
    tmp_out.replace(args.out)
    print(f"\nwrote {args.out}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model_global.safetensors (its .pth must lie beside it)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each cell")
    parser.add_argument("--images", type=int, default=64, help="distinct test images cycled through")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "loadgen.json")
    parser.add_argument("--servers", nargs="+", choices=["app", "naive"], default=["app", "naive"])
    parser.add_argument("--app-args", default="", help="extra `fedcifar serve` options, e.g. '--batch-wait-ms 0'")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from fedcifar.model import build_model
            from fedcifar.track.checkpoint import export_global

            export_global(Path(tmp), build_model("batch").state_dict(), {"norm": "batch", "round": 0})
            model = Path(tmp) / "model_global.safetensors"
        pngs = test_images(args.images)
        cells: list[Cell] = []
        servers = start_servers(model, args.app_args.split())
        for key in args.servers:
            name, cmd, path, port = servers[key]
            server = Server(name, cmd, path, port)
            try:
                requests = [http_request(path, port, png) for png in pngs]
                for c in args.concurrency:
                    load = os.getloadavg()[0]
                    lat, errors, seconds = asyncio.run(closed_loop(port, requests, c, args.warmup, args.duration))
                    ms = [x * 1000 for x in lat]
                    cell = Cell(
                        name,
                        c,
                        len(lat),
                        errors,
                        round(seconds, 2),
                        len(lat) / seconds,
                        statistics.median(ms),
                        percentile(ms, 99),
                        server.mean_batch() if path == "/api/predict" else None,
                        round(load, 2),
                    )
                    print(f"{name} c={c}: {cell.req_per_s:.1f} req/s p50 {cell.p50_ms:.1f} ms p99 {cell.p99_ms:.1f} ms")
                    cells.append(cell)
            finally:
                server.stop()

    write_report(args, "cells", cells)
    print(markdown(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
