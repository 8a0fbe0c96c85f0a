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
trains enough images per worker to repay a warm-up, the faster of those compiled. With
``eval_batch_size=0`` also the evaluation batch, at the chosen precision, from
``EVAL_BATCHES`` (100 ran 22 % faster than 250 on an AMX CPU; on a Zen 4 the batch made no
clear difference). Random images, so no data is touched; the choice changes speed only,
never what a run computes beyond bf16 rounding.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from fedcifar.atomic import atomic_write_text
from fedcifar.client.evaluate import eval_counts
from fedcifar.client.train import read_weights, train_client
from fedcifar.config import Config
from fedcifar.messages import ClientInstructions
from fedcifar.runtime import Runtime, bf16_supported, images_per_worker
from fedcifar.runtime import resolve_runtime as static_runtime

CACHE_VERSION = 2  # 2: evaluation batches are measured too
# A run calibrates when each worker trains at least this many images: at 250-500 images/s a
# worker-second, ~5 minutes of training, against ~15 s for the eager measurement.
CALIBRATE_MIN_IMAGES_PER_WORKER = 100_000
# ... and measures compiled candidates too when each worker trains this many: a warm-up of
# 40-110 s (measured on the three CPUs above) is repaid by a 33 % gain after ~10 minutes.
COMPILE_CANDIDATE_MIN_IMAGES_PER_WORKER = 400_000
STEPS = 12  # timed training steps per worker and candidate, after 3 warm-up steps
EVAL_BATCHES = (100, 250, 1000)  # evaluation batch candidates
EVAL_IMAGES = 2000  # timed evaluation images per worker and candidate, after one warm-up pass


@dataclass(frozen=True)
class Choice:
    bf16: bool
    compile: bool
    rates: dict[str, float]  # images/s of every candidate measured, by name
    source: str  # "measured" or "cached"

    def describe(self) -> str:
        return f"{self.source} images/s: {rates_text(self.rates)}"


def rates_text(rates: dict[str, float]) -> str:
    return ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items())


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


def cache_key(arch: str, norm: str, job: str, workers: int, threads: int) -> str:
    """Where a verdict is cached: per machine, torch, model, job (``b64`` training, ``eval bf16``)
    and worker layout."""
    return f"v{CACHE_VERSION} | {cpu_name()} | torch {torch.__version__} | {arch}/{norm} {job} | {workers}x{threads}"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def train_rate(build: Callable[[], torch.nn.Module], runtime: Runtime, batch_size: int) -> float:
    """Training images/s of ``runtime.workers`` clients trained side by side, on random images,
    through the client update itself (:func:`~fedcifar.client.train.train_client`)."""
    g = torch.Generator().manual_seed(0)
    n = STEPS * batch_size
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (n,), generator=g)
    models = [runtime.prepare(build(), batch_size) for _ in range(runtime.workers)]  # compiles once
    weights = read_weights(models[0])
    warm = ClientInstructions(seed=0, epochs=1, steps=3, batch_size=batch_size)
    for model in models:
        train_client(model, weights, images, labels, warm, runtime)
    timed = ClientInstructions(seed=0, epochs=1, batch_size=batch_size)
    jobs = [lambda m=m: train_client(m, weights, images, labels, timed, runtime) for m in models]
    return runtime.workers * n / _side_by_side(jobs)


def _side_by_side(jobs: list[Callable[[], object]]) -> float:
    """Seconds for ``jobs`` run at once, one thread each (as the worker pool runs clients)."""
    threads = [threading.Thread(target=job) for job in jobs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def eval_rate(build: Callable[[], torch.nn.Module], runtime: Runtime, batch_size: int) -> float:
    """Evaluation images/s of ``runtime.workers`` shards scored side by side, on random images,
    through the evaluation itself (:func:`~fedcifar.client.evaluate.eval_counts`, BatchNorm folded)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (EVAL_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (EVAL_IMAGES,), generator=g)
    models = [runtime.prepare(build()) for _ in range(runtime.workers)]
    jobs = [lambda m=m: eval_counts(m, None, images, labels, runtime, batch_size) for m in models]
    _side_by_side(jobs)  # warm-up: oneDNN picks its kernels for this batch shape
    return runtime.workers * EVAL_IMAGES / _side_by_side(jobs)


def measure_eval(build: Callable[[], torch.nn.Module], runtime: Runtime) -> tuple[int, dict[str, float]]:
    """The fastest of ``EVAL_BATCHES`` on ``runtime``, and every candidate's images/s."""
    rates = {f"eval b{b}": eval_rate(build, runtime, b) for b in EVAL_BATCHES}
    best = max(EVAL_BATCHES, key=lambda b: rates[f"eval b{b}"])
    return best, rates


def measure(
    build: Callable[[], torch.nn.Module], base: Runtime, bf16_ok: bool, try_compile: bool, batch_size: int
) -> Choice:
    """Time every candidate on ``base``'s layout and keep the fastest (compiled only if it beats eager by 5 %)."""
    bf16_runtime = replace(base, amp_dtype=torch.bfloat16)
    rates = {"fp32": train_rate(build, base, batch_size)}
    if bf16_ok:
        rates["bf16"] = train_rate(build, bf16_runtime, batch_size)
    bf16 = rates.get("bf16", 0.0) > rates["fp32"]
    compiled = False
    if try_compile:
        name = ("bf16" if bf16 else "fp32") + " compiled"
        rates[name] = train_rate(build, replace(bf16_runtime if bf16 else base, compile=True), batch_size)
        compiled = rates[name] > 1.05 * max(rates["fp32"], rates.get("bf16", 0.0))
    return Choice(bf16, compiled, rates, "measured")


def _remember(key: str, usable: Callable[[dict], bool], fresh: Callable[[], dict]) -> tuple[dict, str]:
    """The cache entry for ``key`` if ``usable``, else ``fresh()`` (then cached); and its source."""
    path = cache_dir() / "calibration.json"
    cache = _load_cache(path)
    hit = cache.get(key)
    if isinstance(hit, dict) and usable(hit):
        return hit, "cached"
    cache[key] = entry = fresh()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:  # a read-only home: measure again next time
        pass
    return entry, "measured"


def calibrated(
    build: Callable[[], torch.nn.Module],
    key: str,
    base: Runtime,
    bf16_ok: bool,
    try_compile: bool,
    batch_size: int,
) -> Choice:
    """The cached choice for ``key``, or a new measurement (then cached). Cached compile verdicts
    are kept only if they measured what this run needs (a compiled candidate when ``try_compile``)."""

    def usable(hit: dict) -> bool:
        return not try_compile or any("compiled" in k for k in hit.get("rates", {}))

    def fresh() -> dict:
        choice = measure(build, base, bf16_ok, try_compile, batch_size)
        return {k: v for k, v in asdict(choice).items() if k != "source"}

    hit, source = _remember(key, usable, fresh)
    return Choice(bool(hit["bf16"]), bool(hit["compile"]) and try_compile, dict(hit["rates"]), source)


def calibrated_eval_batch(build: Callable[[], torch.nn.Module], key: str, runtime: Runtime) -> tuple[int, str]:
    """The fastest evaluation batch for ``key`` (cached, or measured on ``runtime``), and how it was found."""

    def fresh() -> dict:
        best, rates = measure_eval(build, runtime)
        return {"eval_batch_size": best, "rates": rates}

    hit, source = _remember(key, lambda hit: "eval_batch_size" in hit, fresh)
    return int(hit["eval_batch_size"]), f"{source} {rates_text(hit['rates'])}"


def resolve_runtime(cfg: Config) -> Runtime:
    """:func:`fedcifar.runtime.resolve_runtime`, except that a long CPU run takes what this
    machine measured (or cached) for its model and layout: ``precision`` and ``compile`` where
    they are auto, the evaluation batch where ``eval_batch_size`` is 0."""
    from fedcifar.federation import model_spec

    runtime = static_runtime(cfg)
    images = images_per_worker(cfg, runtime.workers)
    if runtime.device.type != "cpu" or images < CALIBRATE_MIN_IMAGES_PER_WORKER:
        return runtime
    build = model_spec(cfg).build
    torch.set_num_threads(runtime.threads_per_worker)
    notes = []
    if "auto" in (cfg.precision, cfg.compile):
        try_compile = cfg.compile == "auto" and images >= COMPILE_CANDIDATE_MIN_IMAGES_PER_WORKER
        key = cache_key(cfg.model, cfg.norm, f"b{cfg.batch_size}", runtime.workers, runtime.threads_per_worker)
        base = replace(runtime, amp_dtype=None, compile=False)  # fp32, eager
        choice = calibrated(build, key, base, bf16_supported(base.device), try_compile, cfg.batch_size)
        runtime = replace(
            runtime,
            amp_dtype=(torch.bfloat16 if choice.bf16 else None) if cfg.precision == "auto" else runtime.amp_dtype,
            compile=choice.compile if cfg.compile == "auto" else runtime.compile,
        )
        notes.append(choice.describe())
    if cfg.eval_batch_size == 0:
        bf16 = runtime.amp_dtype is not None
        job = f"eval {'bf16' if bf16 else 'fp32'}"
        key = cache_key(cfg.model, cfg.norm, job, runtime.workers, runtime.threads_per_worker)
        batch, note = calibrated_eval_batch(build, key, replace(runtime, compile=False))
        runtime = replace(runtime, eval_batch_size=batch)
        notes.append(f"{note}: eval batch {batch}")
    return replace(runtime, calibration="; ".join(notes))
