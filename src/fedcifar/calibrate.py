"""``precision=auto`` and ``compile=auto`` on a CPU, decided by measuring this machine.

CPUs of one kind differ in what pays: on an AMD Zen 4 bf16 autocast trained ResNet-20 1.6x
faster than fp32 and torch.compile did not pay; on an Intel CPU with AMX compile paid 33 %;
on an Intel CPU whose hypervisor hides AMX, bf16 was slower than fp32 (docs/performance.md).
No rule written from one of them is right on the others, so a long run measures the
candidates once, with the run's own model, batch size and worker layout, and keeps the
fastest. The result is cached per machine and model (``calibration.json`` in
``$FEDCIFAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedcifar``, else ``~/.cache/fedcifar``), so
a machine pays the measurement once. A short run never measures: it keeps the static rule
(bf16 where the CPU has it, eager), because the measurement would cost more than it saves.

Which candidates are measured: fp32 and (where supported) bf16, eager; and, for a run that
trains enough images per worker to repay a warm-up, the faster of those compiled. Random
images, so no data is touched; the choice changes speed only, never what a run computes
beyond bf16 rounding.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fedcifar.track.io import atomic_write_text

CACHE_VERSION = 1
# A run calibrates when each worker trains at least this many images: at 250-500 images/s a
# worker-second, ~5 minutes of training, against ~15 s for the eager measurement.
CALIBRATE_MIN_IMAGES_PER_WORKER = 100_000
# ... and measures compiled candidates too when each worker trains this many: a warm-up of
# 40-110 s (measured on the three CPUs above) is repaid by a 33 % gain after ~10 minutes.
COMPILE_CANDIDATE_MIN_IMAGES_PER_WORKER = 400_000
STEPS = 12  # timed training steps per worker and candidate, after 3 warm-up steps


@dataclass(frozen=True)
class Choice:
    bf16: bool
    compile: bool
    rates: dict[str, float]  # images/s of every candidate measured, by name
    source: str  # "measured" or "cached"

    def describe(self) -> str:
        rates = ", ".join(f"{name} {rate:.0f}" for name, rate in self.rates.items())
        return f"{self.source} images/s: {rates}"


def cache_dir() -> Path:
    if os.environ.get("FEDCIFAR_CACHE_DIR"):
        return Path(os.environ["FEDCIFAR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedcifar"


def cpu_name() -> str:
    """The CPU's model name and the flags that decide bf16 speed (AMX can be hidden by a hypervisor)."""
    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # pragma: no cover - non-Linux
        pass
    wanted = sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_fp16")))
    return " ".join([name, *wanted])


def cache_key(arch: str, norm: str, batch_size: int, workers: int, threads: int) -> str:
    return f"v{CACHE_VERSION} | {cpu_name()} | torch {torch.__version__} | {arch}/{norm} b{batch_size} | {workers}x{threads}"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def train_rate(
    build: Callable[[], torch.nn.Module], bf16: bool, compiled: bool, workers: int, batch_size: int
) -> float:
    """Training images/s of ``workers`` models trained side by side on random images."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch_size,), generator=g)
    models = []
    for _ in range(workers):
        model = build().to(memory_format=torch.channels_last)
        models.append(torch.compile(model) if compiled else model)

    def steps(model: torch.nn.Module, count: int) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        model.train()
        for _ in range(count):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    steps(models[0], 3)  # compiles once; the other workers reuse the compiled code
    for model in models[1:]:
        steps(model, 3)
    threads = [threading.Thread(target=steps, args=(m, STEPS)) for m in models]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return workers * STEPS * batch_size / (time.perf_counter() - start)


def measure(
    build: Callable[[], torch.nn.Module], bf16_ok: bool, try_compile: bool, workers: int, batch_size: int
) -> Choice:
    """Time every candidate and keep the fastest (compiled only if it beats eager by 5 %)."""
    rates = {"fp32": train_rate(build, False, False, workers, batch_size)}
    if bf16_ok:
        rates["bf16"] = train_rate(build, True, False, workers, batch_size)
    bf16 = rates.get("bf16", 0.0) > rates["fp32"]
    compiled = False
    if try_compile:
        name = ("bf16" if bf16 else "fp32") + " compiled"
        rates[name] = train_rate(build, bf16, True, workers, batch_size)
        compiled = rates[name] > 1.05 * max(rates["fp32"], rates.get("bf16", 0.0))
    return Choice(bf16, compiled, rates, "measured")


def calibrated(
    build: Callable[[], torch.nn.Module],
    key: str,
    bf16_ok: bool,
    try_compile: bool,
    workers: int,
    batch_size: int,
) -> Choice:
    """The cached choice for ``key``, or a new measurement (then cached). Cached compile verdicts
    are kept only if they measured what this run needs (a compiled candidate when ``try_compile``)."""
    path = cache_dir() / "calibration.json"
    cache = _load_cache(path)
    hit = cache.get(key)
    if isinstance(hit, dict) and (not try_compile or any("compiled" in k for k in hit.get("rates", {}))):
        return Choice(bool(hit["bf16"]), bool(hit["compile"]) and try_compile, dict(hit["rates"]), "cached")
    choice = measure(build, bf16_ok, try_compile, workers, batch_size)
    cache[key] = {k: v for k, v in asdict(choice).items() if k != "source"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:  # a read-only home: measure again next time
        pass
    return choice
