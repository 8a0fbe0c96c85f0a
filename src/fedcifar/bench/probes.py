"""What the hardware can do, measured in the same process layout as training.

* :func:`training_flops_per_image` counts the forward + backward FLOPs of one training
  step with ``torch.utils.flop_counter`` (matmuls and convolutions; elementwise work and
  the optimizer step are not counted, as is usual for "model FLOPs").
* :func:`peak_matmul` runs square matmuls on ``workers`` threads with ``threads`` intra-op
  threads each, exactly the layout the engine trains in, and keeps the best size.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedcifar.runtime import Runtime


def training_flops_per_image(model: nn.Module, runtime: Runtime, batch_size: int = 64) -> float:
    """Forward + backward FLOPs of one training step on 32x32 images, divided by the batch."""
    model = model.to(runtime.device, memory_format=runtime.memory_format).train()
    x = torch.randn(batch_size, 3, 32, 32, device=runtime.device).contiguous(memory_format=runtime.memory_format)
    y = torch.randint(0, 100, (batch_size,), device=runtime.device)
    counter = FlopCounterMode(display=False)
    with counter, runtime.autocast():
        loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
    return counter.get_total_flops() / batch_size


@dataclass(frozen=True)
class MatmulPeak:
    dtype: str
    workers: int
    threads_per_worker: int
    flops_per_sec: float  # best over sizes, all workers together
    by_size: dict[int, float]


def _concurrent_matmuls(n: int, dtype: torch.dtype, workers: int, seconds: float, device: torch.device) -> float:
    """FLOP/s of ``workers`` threads each multiplying n x n matrices for about ``seconds``."""
    mats = [
        (torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)) for _ in range(workers)
    ]
    for a, b in mats:  # warm up: oneDNN/BLAS kernel selection and page faults
        torch.mm(a, b)
    t_one = time.perf_counter()
    torch.mm(*mats[0])
    one = max(time.perf_counter() - t_one, 1e-6)
    iters = max(2, round(seconds / one))  # workers run side by side, each about ``seconds``
    barrier = threading.Barrier(workers + 1)

    def run(a: torch.Tensor, b: torch.Tensor) -> None:
        barrier.wait()
        for _ in range(iters):
            torch.mm(a, b)

    pool = [threading.Thread(target=run, args=pair) for pair in mats]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return workers * iters * 2 * n**3 / elapsed


def peak_matmul(
    dtype: torch.dtype,
    workers: int,
    threads: int,
    sizes: tuple[int, ...] = (1024, 2048, 3072, 4096),
    seconds: float = 2.0,
    device: torch.device | str = "cpu",
) -> MatmulPeak:
    """Best FLOP/s over square sizes, with ``workers`` concurrent threads of ``threads`` each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        by_size = {n: _concurrent_matmuls(n, dtype, workers, seconds, torch.device(device)) for n in sizes}
    finally:
        torch.set_num_threads(previous)
    name = str(dtype).removeprefix("torch.")
    return MatmulPeak(name, workers, threads, max(by_size.values()), by_size)
