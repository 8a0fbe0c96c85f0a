"""A pool of client trainers: one model per worker, results yielded in submission order.

Workers are threads: PyTorch releases the GIL inside its kernels, so W threads running
single-threaded ops keep W cores busy while sharing one in-memory dataset. Each worker
borrows a model from the pool for a task and gives it back; models are reloaded from the
global weights by the task, never deep-copied.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from torch import nn

R = TypeVar("R")
Task = Callable[[nn.Module], R]


class ModelPool:
    def __init__(self, model_factory: Callable[[], nn.Module], workers: int) -> None:
        self.workers = workers
        self._models: queue.Queue[nn.Module] = queue.Queue()
        for _ in range(workers):
            self._models.put(model_factory())
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedcifar-client")

    def _call(self, task: Task) -> R:
        model = self._models.get()
        try:
            return task(model)
        finally:
            self._models.put(model)

    def borrow(self, task: Task) -> R:
        """Run ``task`` on an idle model in the calling thread (for evaluation)."""
        return self._call(task)

    def map(self, tasks: Iterable[Task]) -> Iterator[R]:
        """Run tasks in parallel and yield their results in order.

        At most ``2 * workers`` tasks are in flight, so at most that many results (each a
        full state dict) wait in memory, however many clients a round has.
        """
        pending: deque[Future] = deque()
        it = iter(tasks)
        window = 2 * self.workers
        try:
            for task in it:
                pending.append(self._executor.submit(self._call, task))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
