"""A pool of client trainers: one model per worker, results yielded in submission order.

Workers are threads: PyTorch releases the GIL inside its kernels, so W threads running
single-threaded ops keep W cores busy while sharing one in-memory dataset. Each worker
borrows a slot (a model, plus a CUDA stream on GPUs) for a task and gives it back; models
are reloaded from the global weights by the task, never deep-copied.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

R = TypeVar("R")
Task = Callable[[nn.Module], R]


class Late:
    """Stands in for the result of a task that did not finish before the deadline."""

    def __repr__(self) -> str:
        return "LATE"


LATE = Late()


@dataclass
class Slot:
    model: nn.Module
    stream: Any = None  # a torch.cuda.Stream, or None on CPU


class ModelPool:
    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        workers: int,
        stream_factory: Callable[[], Any] | None = None,
        stream_context: Callable[[Any], AbstractContextManager] | None = None,
    ) -> None:
        self.workers = workers
        self._stream_context = stream_context or (lambda _s: nullcontext())
        self._slots: queue.Queue[Slot] = queue.Queue()
        for _ in range(workers):
            self._slots.put(Slot(model_factory(), stream_factory() if stream_factory else None))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedcifar-client")

    def _call(self, task: Task) -> R:
        slot = self._slots.get()
        try:
            with self._stream_context(slot.stream):
                result = task(slot.model)
            if slot.stream is not None:
                slot.stream.synchronize()  # results are read on other streams next
            return result
        finally:
            self._slots.put(slot)

    def borrow(self, task: Task) -> R:
        """Run ``task`` on an idle model in the calling thread."""
        return self._call(task)

    def map(self, tasks: Iterable[Task], timeout: float = 0.0) -> Iterator[R | Late]:
        """Run tasks in parallel and yield their results in order.

        At most ``2 * workers`` tasks are in flight, so at most that many results (each a
        full state dict) wait in memory, however many clients a round has. With a
        ``timeout`` (seconds, 0 = none), every task not finished that long after the call
        yields :data:`LATE` instead: queued ones are cancelled, running ones are abandoned
        (they finish in the background and their results are dropped).
        """
        deadline = time.monotonic() + timeout if timeout > 0 else None
        pending: deque[Future] = deque()
        it = iter(tasks)
        window = 2 * self.workers

        def timed(task: Task) -> tuple[R, float]:
            return self._call(task), time.monotonic()

        def next_result() -> R | Late:
            fut = pending.popleft()
            if deadline is None:
                return fut.result()
            try:
                result, finished = fut.result(timeout=max(deadline - time.monotonic(), 0.0))
            except FutureTimeout:
                fut.cancel()
                return LATE
            return result if finished <= deadline else LATE

        try:
            for task in it:
                if deadline is not None and time.monotonic() >= deadline:
                    yield LATE  # never started
                    continue
                pending.append(self._executor.submit(self._call if deadline is None else timed, task))
                if len(pending) >= window:
                    yield next_result()
            while pending:
                yield next_result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
