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

# compile=auto compiles when a worker trains at least this many images in the run (None: never).
# CPU: measured on the 2-core Zen 4 box, two single-thread bf16 workers ran no faster compiled
# (35 vs 44 img/s under the same load) after a 77 s warm-up, and a compiled ResNet-20 trained
# slower than eager on one thread (454-482 vs 520-527 img/s, 42 s warm-up), so auto never
# compiles there.
# CUDA: compiled kernels fuse the elementwise tail of every conv block; a long run repays the
# warm-up (not measured here: no GPU on the development machine).
COMPILE_MIN_IMAGES_PER_WORKER: dict[str, int | None] = {"cpu": None, "cuda": 200_000}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None means plain fp32
    channels_last: bool
    workers: int
    threads_per_worker: int
    compile: bool = False

    @property
    def fused_optimizer(self) -> bool:
        """Fused Adam/SGD: one kernel over all parameters; ~10 % more images/s on this CPU."""
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

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a fresh model to the device and memory format, compiled if chosen."""
        model = model.to(self.device, memory_format=self.memory_format)
        return torch.compile(model) if self.compile else model

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
        return (
            f"{self.device.type}, {precision}, {layout}{compiled}, "
            f"{self.workers} worker(s) x {self.threads_per_worker} thread(s)"
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


def compile_pays(cfg: Config, device_type: str, workers: int) -> bool:
    """``compile=auto``: compile only when a run trains enough images to repay the warm-up."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    per_client = 50_000 / cfg.num_clients * cfg.local_epochs
    if cfg.local_steps:
        per_client = cfg.local_steps * cfg.batch_size
    images_per_worker = cfg.rounds * cfg.clients_per_round * per_client / max(workers, 1)
    threshold = COMPILE_MIN_IMAGES_PER_WORKER[device_type]
    return threshold is not None and images_per_worker >= threshold


def resolve_runtime(cfg: Config) -> Runtime:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        from fedcifar.config import ConfigError

        raise ConfigError("device=cuda requested but CUDA is not available")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    wants_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(device))
    amp = torch.bfloat16 if wants_bf16 else None
    workers, threads = worker_layout(
        device.type, cpu_count(), cfg.clients_per_round, cfg.workers, cfg.threads_per_worker
    )
    return Runtime(device, amp, cfg.channels_last, workers, threads, compile_pays(cfg, device.type, workers))
