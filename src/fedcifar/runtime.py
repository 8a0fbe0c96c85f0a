"""Where and how to compute: device, precision, memory format, compilation and the worker layout.

These choices change speed, not the algorithm. ``auto`` picks CUDA when present, bf16
autocast where the hardware runs it natively, and as many single-thread CPU workers as
there are cores (two one-thread workers beat one two-thread worker on small convnets).
On CUDA, the data and its augmentation stay on the GPU and each worker owns a CUDA stream,
so several clients are in flight at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedcifar.config import Config

# CUDA: compile=auto compiles when a worker trains at least this many images in the run; the
# compiled kernels fuse the elementwise tail of every conv block, and a long run repays the
# warm-up (not measured here: no GPU on the development machine). CPU: see fedcifar.calibrate,
# which measures instead.
COMPILE_MIN_IMAGES_PER_WORKER_CUDA = 200_000
# eval_batch_size=0 without a measurement: large batches keep a GPU busy; on a CPU 250 was never
# slower than 1000 on the machines measured (docs/performance.md).
STATIC_EVAL_BATCH = {"cuda": 1000, "cpu": 250}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None means plain fp32
    channels_last: bool
    workers: int
    threads_per_worker: int
    compile: bool = False
    eval_batch_size: int = 1000  # test and validation batches
    calibration: str = ""  # what fedcifar.calibrate measured (or read from its cache), if it decided

    @property
    def fused_optimizer(self) -> bool:
        """Fused Adam/SGD: one kernel over all parameters (its speed-up: docs/performance.md)."""
        return self.device.type in ("cpu", "cuda")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def new_stream(self) -> Any:
        """A side stream for one worker on CUDA, so workers' kernels overlap; None on CPU."""
        return torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    def stream(self, stream: Any) -> AbstractContextManager:
        """Run the enclosed kernels on ``stream`` (no-op on CPU or for None)."""
        return _on_stream(stream) if stream is not None else nullcontext()

    def prepare(self, model: nn.Module, batch_size: int = 0) -> nn.Module:
        """Move a fresh model to the device and memory format, compiled if chosen.

        With ``batch_size``, a compiled model also trains one throw-away step at that batch
        size here, so that models prepared one after another compile once: the first pays
        the warm-up and the others reuse its code, instead of every worker compiling the
        same graph at once in the first round. (Its weights are reloaded before any use.)
        """
        model = model.to(self.device, memory_format=self.memory_format)
        if not self.compile:
            return model
        model = torch.compile(model)
        if batch_size:
            self._warm_up(model, batch_size)
        return model

    def _warm_up(self, model: nn.Module, batch_size: int) -> None:
        g = torch.Generator(device=self.device).manual_seed(0)
        x = torch.randn(batch_size, 3, 32, 32, generator=g, device=self.device).contiguous(
            memory_format=self.memory_format
        )
        model.train()
        with self.autocast():
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    def apply_global_settings(self) -> None:
        """Process-wide knobs: intra-op threads; cuDNN autotuning and TF32 on CUDA."""
        torch.set_num_threads(self.threads_per_worker)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def describe(self) -> str:
        precision = "fp32" if self.amp_dtype is None else "bf16 autocast"
        layout = "channels-last" if self.channels_last else "NCHW"
        compiled = ", torch.compile" if self.compile else ""
        calibration = f" (auto: {self.calibration})" if self.calibration else ""
        return (
            f"{self.device.type}, {precision}, {layout}{compiled}, "
            f"{self.workers} worker(s) x {self.threads_per_worker} thread(s){calibration}"
        )


@contextmanager
def _on_stream(stream: Any) -> Iterator[None]:
    # The global weights were written on the default stream: wait for them before reading.
    stream.wait_stream(torch.cuda.default_stream(stream.device))
    with torch.cuda.stream(stream):
        yield


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def worker_layout(device_type: str, cores: int, clients_per_round: int, workers: int = 0, threads: int = 0):
    """(workers, threads per worker) for a device and core count; explicit values win.

    CPU: one single-thread worker per core (capped by the clients a round trains), because a
    ResNet-18 at batch 64 scales worse across intra-op threads than across independent
    clients. CUDA: two workers, each on its own stream, keep the GPU busy while the other
    one runs Python.
    """
    if device_type == "cuda":
        workers = workers or min(2, clients_per_round)
        threads = threads or max(1, min(4, cores))
    else:
        workers = workers or max(1, min(cores, clients_per_round))
        threads = threads or max(1, cores // workers)
    return workers, threads


def images_per_worker(cfg: Config, workers: int) -> float:
    """Training images each worker trains in the whole run (clients of the mean size)."""
    per_client = 50_000 / cfg.num_clients * cfg.local_epochs
    if cfg.local_steps:
        per_client = cfg.local_steps * cfg.batch_size
    return cfg.rounds * cfg.clients_per_round * per_client / max(workers, 1)


def compile_pays(cfg: Config, device_type: str, workers: int) -> bool:
    """``compile=auto`` without a measurement: on CUDA for runs long enough to repay the warm-up; never on CPU."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    return device_type == "cuda" and images_per_worker(cfg, workers) >= COMPILE_MIN_IMAGES_PER_WORKER_CUDA


def resolve_runtime(cfg: Config) -> Runtime:
    """Where and how ``cfg`` runs, with auto by the static rule: bf16 where supported, compile on
    CUDA for long runs, evaluation batches of ``STATIC_EVAL_BATCH``. The engines that train a whole run use
    :func:`fedcifar.calibrate.resolve_runtime`, which measures on a CPU instead."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        from fedcifar.config import ConfigError

        raise ConfigError("device=cuda requested but CUDA is not available")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    workers, threads = worker_layout(
        device.type, cpu_count(), cfg.clients_per_round, cfg.workers, cfg.threads_per_worker
    )
    wants_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(device))
    amp = torch.bfloat16 if wants_bf16 else None
    eval_batch = cfg.eval_batch_size or STATIC_EVAL_BATCH.get(device.type, 1000)
    return Runtime(
        device, amp, cfg.channels_last, workers, threads, compile_pays(cfg, device.type, workers), eval_batch
    )
