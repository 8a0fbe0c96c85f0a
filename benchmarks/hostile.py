"""The web app under hostile load: decompression-bomb uploads, the largest accepted images, and sustained load.

Starts ``fedcifar serve --model`` as its own process, then, for each scenario, drives it with N
closed-loop clients (keep-alive connections posting as soon as the previous answer arrives)
while a prober asks ``/health`` every 50 ms on its own connection. Reports, per scenario, the
server's RSS growth (peak over the scenario, from the kernel's VmHWM, reset when the scenario
starts; and at its end), the answers by status, and the /health latency, prints a markdown
table and writes JSON.

    python benchmarks/hostile.py [--scenarios bomb largest sustained] [--out runs/bench/hostile.json]

Scenarios:

* ``bomb``: 20 clients post the issue's 121 KiB 16-bit grayscale PNG of 7999 x 7999 pixels.
* ``largest``: 20 clients post a 4096 x 4096 RGBA PNG with transparency, the largest size the
  default pixel limit accepts (its decode is real work: admission control answers 503 beyond
  the decode slots and their queue).
* ``sustained``: 16 clients post CIFAR-100 test images (32 x 32 PNG) for 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import ROOT, Server, free_port, http_request, percentile, test_images, write_report  # noqa: E402


@dataclass
class Scenario:
    name: str
    upload: str
    clients: int
    seconds: float
    answers: dict[str, int]  # status code -> count
    errors: int  # answers that are neither 200 nor a deliberate refusal (413, 503), or broken connections
    req_per_s: float
    rss_start_mb: float
    rss_peak_growth_mb: float
    rss_end_growth_mb: float
    health_checks: int
    health_failures: int
    health_p50_ms: float
    health_p99_ms: float
    load_before: float


def bomb_png() -> bytes:
    """16-bit grayscale, 7999 x 7999, all zero: 121 KiB on disk, 128 MB as 16-bit pixels."""
    buf = io.BytesIO()
    Image.new("I;16", (7999, 7999)).save(buf, format="PNG")
    return buf.getvalue()


def largest_png(side: int = 4096) -> bytes:
    """RGBA with a transparent gradient: every pixel is composited, nothing compresses to nothing."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    rgba = np.empty((side, side, 4), dtype=np.uint8)
    rgba[..., 0] = ramp[None, :]
    rgba[..., 1] = ramp[:, None]
    rgba[..., 2] = 128
    rgba[..., 3] = ramp[::-1][None, :]
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def proc_status(pid: int, field: str) -> float:
    """A VmRSS/VmHWM-style field of /proc/PID/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is this scenario's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def read_response(reader: asyncio.StreamReader) -> int:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = next((int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    if any(h.lower() == "connection: close" for h in head):
        raise ConnectionResetError("server closed the connection")  # reconnect
    return status


async def drive(port: int, requests: list[bytes], clients: int, warmup: float, duration: float):
    """Closed-loop clients and a /health prober; answers by status, broken connections, health latencies."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    answers: Counter[str] = Counter()
    health_ms: list[float] = []
    health_failures = 0

    async def client(k: int) -> None:
        i = k
        reader = writer = None
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(requests[i % len(requests)])
                i += clients
                await writer.drain()
                status = str(await read_response(reader))
            except (OSError, asyncio.IncompleteReadError) as exc:
                status = type(exc).__name__
                if writer is not None:
                    writer.close()
                reader = writer = None
            if t0 >= measure_from:
                answers[status] += 1
            if status == "503":
                await asyncio.sleep(0.2)  # what Retry-After asks for, shortened: keep the pressure on
        if writer is not None:
            writer.close()

    async def prober() -> None:
        nonlocal health_failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        get = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(get)
            await writer.drain()
            status = await read_response(reader)
            if t0 >= measure_from:
                health_ms.append((time.perf_counter() - t0) * 1000)
                health_failures += status != 200
            await asyncio.sleep(0.05)
        writer.close()

    await asyncio.gather(prober(), *(client(k) for k in range(clients)))
    return answers, health_ms, health_failures, time.perf_counter() - measure_from


def run_scenario(server: Server, name: str, upload: str, pngs: list[bytes], clients: int, seconds: float, warmup):
    pid = server.proc.pid
    requests = [http_request("/api/predict", server.port, png) for png in pngs]
    load = os.getloadavg()[0]
    rss_start = proc_status(pid, "VmRSS")
    reset_peak(pid)
    answers, health_ms, health_failures, elapsed = asyncio.run(drive(server.port, requests, clients, warmup, seconds))
    peak = proc_status(pid, "VmHWM")
    time.sleep(1.0)  # let in-flight work finish before the end reading
    rss_end = proc_status(pid, "VmRSS")
    errors = sum(n for status, n in answers.items() if status not in ("200", "413", "503"))
    cell = Scenario(
        name=name,
        upload=upload,
        clients=clients,
        seconds=round(elapsed, 2),
        answers=dict(sorted(answers.items())),
        errors=errors,
        req_per_s=round(sum(answers.values()) / elapsed, 1),
        rss_start_mb=round(rss_start, 1),
        rss_peak_growth_mb=round(peak - rss_start, 1),
        rss_end_growth_mb=round(rss_end - rss_start, 1),
        health_checks=len(health_ms),
        health_failures=health_failures,
        health_p50_ms=round(percentile(health_ms, 50), 1) if health_ms else float("nan"),
        health_p99_ms=round(percentile(health_ms, 99), 1) if health_ms else float("nan"),
        load_before=round(load, 2),
    )
    print(
        f"{name}: {cell.answers} errors {errors}; RSS +{cell.rss_peak_growth_mb} MB peak, "
        f"+{cell.rss_end_growth_mb} MB at the end; /health p50 {cell.health_p50_ms} ms p99 {cell.health_p99_ms} ms",
        flush=True,
    )
    return cell


def markdown(cells: list[Scenario]) -> str:
    lines = [
        "| scenario | upload | clients | s | answers | errors | RSS peak growth MB | RSS growth at end MB "
        "| /health p99 ms | load avg before |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        answers = ", ".join(f"{n}× {s}" for s, n in c.answers.items())
        lines.append(
            f"| {c.name} | {c.upload} | {c.clients} | {c.seconds:.0f} | {answers} | {c.errors} "
            f"| {c.rss_peak_growth_mb:.0f} | {c.rss_end_growth_mb:.0f} | {c.health_p99_ms:.1f} | {c.load_before:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=["bomb", "largest", "sustained"], default=None)
    parser.add_argument("--hostile-clients", type=int, default=20, help="clients in the bomb and largest scenarios")
    parser.add_argument("--hostile-seconds", type=float, default=15.0, help="measured seconds of those scenarios")
    parser.add_argument("--sustained-clients", type=int, default=16)
    parser.add_argument("--sustained-seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each scenario")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "hostile.json")
    parser.add_argument("--app-args", default="", help="extra `fedcifar serve` options")
    args = parser.parse_args()
    scenarios = args.scenarios or ["bomb", "largest", "sustained"]

    cells: list[Scenario] = []
    with tempfile.TemporaryDirectory() as tmp:
        from fedcifar.model import build_model
        from fedcifar.track.checkpoint import export_global

        export_global(Path(tmp), build_model("batch").state_dict(), {"norm": "batch", "round": 1})
        model = Path(tmp) / "model_global.safetensors"
        port = free_port()
        cmd = [sys.executable, "-m", "fedcifar", "serve", "--model", str(model), "--port", str(port)]
        server = Server("fedcifar", cmd + args.app_args.split(), "/api/predict", port)
        try:
            for name in scenarios:
                if name == "bomb":
                    png = bomb_png()
                    upload = f"{len(png) / 1024:.0f} KiB 16-bit grayscale PNG, 7999×7999"
                    cells.append(
                        run_scenario(server, name, upload, [png], args.hostile_clients, args.hostile_seconds, 0.0)
                    )
                elif name == "largest":
                    png = largest_png()
                    upload = f"{len(png) / 1024 / 1024:.1f} MiB RGBA PNG with transparency, 4096×4096"
                    cells.append(
                        run_scenario(server, name, upload, [png], args.hostile_clients, args.hostile_seconds, 0.0)
                    )
                else:
                    cells.append(
                        run_scenario(
                            server,
                            name,
                            "CIFAR-100 test images, 32×32 PNG",
                            test_images(64),
                            args.sustained_clients,
                            args.sustained_seconds,
                            args.warmup,
                        )
                    )
        finally:
            server.stop()

    write_report(args, "scenarios", cells)
    print(markdown(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
