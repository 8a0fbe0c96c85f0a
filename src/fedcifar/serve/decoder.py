"""Bounded image decoding: a few decode threads of its own and a short queue, then 503.

Decoding a large upload costs up to ~130 MB and a good part of a second of CPU. Run in the
shared threadpool, 40 such decodes could run at once, and cheap endpoints that need a thread
would wait behind them. Here at most ``workers`` decodes run, each on a thread of this pool,
and at most ``queue`` more wait; a request beyond that is refused at once with
:class:`DecoderBusy` (the endpoint answers 503 with ``Retry-After``) rather than queued without
end. The count covers a decode from submission until its thread finishes, so a client that
gives up does not free its slot before the work it started does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

RETRY_AFTER_S = 1


class DecoderBusy(RuntimeError):
    """Every decode thread is busy and the queue is full."""


class DecodePool:
    def __init__(self, workers: int, queue: int) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedcifar-decode")
        self._lock = threading.Lock()
        self._pending = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        """Decodes running or queued."""
        return self._pending

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on a decode thread; :class:`DecoderBusy` if ``capacity`` decodes are pending."""
        with self._lock:
            if self._pending >= self.capacity:
                self.refused += 1
                raise DecoderBusy(
                    f"server busy: {self._pending} large images are being decoded or wait for it; retry shortly"
                )
            self._pending += 1
        try:
            job = self._executor.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        job.add_done_callback(self._release)  # also runs when a queued job is cancelled
        return await asyncio.wrap_future(job)

    def _release(self, _job: Future | None = None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
