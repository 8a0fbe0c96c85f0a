"""Where and how to compute: device, precision, memory format and the worker layout.

These choices change speed, not the algorithm. ``auto`` picks CUDA when present, bf16
autocast where the hardware runs it natively, and as many single-thread CPU workers as
there are cores (two one-thread workers beat one two-thread worker on small convnets).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from fedcifar.config import Config


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None means plain fp32
    channels_last: bool
    workers: int
    threads_per_worker: int

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        precision = "fp32" if self.amp_dtype is None else "bf16 autocast"
        layout = "channels-last" if self.channels_last else "NCHW"
        return (
            f"{self.device.type}, {precision}, {layout}, {self.workers} worker(s) x {self.threads_per_worker} thread(s)"
        )


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


def resolve_runtime(cfg: Config) -> Runtime:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        from fedcifar.config import ConfigError

        raise ConfigError("device=cuda requested but CUDA is not available")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    wants_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(device))
    amp = torch.bfloat16 if wants_bf16 else None
    cores = cpu_count()
    if device.type == "cuda":
        workers = cfg.workers or 2  # two clients in flight overlap Python overhead with kernels
        threads = cfg.threads_per_worker or max(1, min(4, cores))
    else:
        workers = cfg.workers or max(1, min(cores, cfg.clients_per_round))
        threads = cfg.threads_per_worker or max(1, cores // workers)
    return Runtime(device, amp, cfg.channels_last, workers, threads)
