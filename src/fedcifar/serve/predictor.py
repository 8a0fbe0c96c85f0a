"""The served model: loading, atomic hot swap, and micro-batched inference off the event loop.

* :class:`Predictor` turns a model file into a ready :class:`LoadedModel` and runs a batch
  through one. A new model is loaded completely (weights, eval mode, memory format, a
  warm-up batch) before anything can see it.
* :class:`ModelStore` holds the current :class:`LoadedModel`. Swapping is one reference
  assignment, and each batch reads the reference once, so a request is answered by either
  the old model or the new one, never by a half-loaded mix.
* :class:`MicroBatcher` queues requests from the event loop and runs them through the model
  in batches on one dedicated inference thread. While a batch runs, newcomers queue up and
  form the next batch, so batch size grows with load and a lone request waits at most
  ``batch_wait_ms`` for company (0 by default: measured here, natural batching alone gave
  lower latency at one client and no less throughput at 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fedcifar.data.augment import Normalize
from fedcifar.errors import one_line
from fedcifar.runtime import Runtime, bf16_supported
from fedcifar.serve.model_file import ServedInfo, first_non_finite, served_info
from fedcifar.track.checkpoint import CheckpointError, load_model, read_metadata

log = logging.getLogger("fedcifar.serve")


class NoModelYet(RuntimeError):
    """The server follows a run whose first round has not finished."""


class ModelChanged(CheckpointError):
    """The model file was replaced during loading; load again."""


class InferenceFailed(RuntimeError):
    """The served model could not answer a batch (an error, or non-finite outputs)."""


@dataclass(frozen=True)
class FileStamp:
    """Identity of a model file version: a new atomic write changes at least one field."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    info: ServedInfo  # the export's validated metadata: arch, norm, num_classes, round, test_acc
    path: Path
    stamp: FileStamp | None
    loaded_at: float = field(default_factory=time.time)

    @property
    def round(self) -> int:
        return self.info.round

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


def inference_runtime(precision: str = "auto", channels_last: bool = True) -> Runtime:
    """CPU (or CUDA) runtime for serving: bf16 autocast where the hardware runs it natively."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "bf16" and not bf16_supported(device):
        raise ValueError(f"--precision bf16 requested, but this {device.type} has no native bf16")
    amp = torch.bfloat16 if precision == "bf16" or (precision == "auto" and bf16_supported(device)) else None
    return Runtime(device, amp, channels_last, workers=1, threads_per_worker=torch.get_num_threads())


class Predictor:
    """Loads model files and runs uint8 image batches through them.

    ``num_labels``, if given, is how many label names the server has: a model with another
    number of classes is refused, since its answers could not be named.
    """

    def __init__(self, runtime: Runtime, num_labels: int | None = None) -> None:
        self.runtime = runtime
        self.num_labels = num_labels
        self.normalize = Normalize(runtime.device)

    def load(self, path: Path) -> LoadedModel:
        """Validate, build, fill, check and warm up a model from an exported file. Raises CheckpointError.

        The metadata is validated before anything is built from it; weights holding a NaN or
        an infinity, or a warm-up batch that answers with one, refuse the file.
        """
        path = Path(path)
        stamp = FileStamp.of(path)
        info = served_info(read_metadata(path), path, self.num_labels)
        model, _ = load_model(path)
        if FileStamp.of(path) != stamp:
            # The file is opened more than once (metadata, then tensors): a replacement in between
            # could pair one round's metadata with another's weights. Never serve that mix.
            raise ModelChanged(f"{path} was replaced while loading; loading the new version instead")
        if (bad := first_non_finite(model.state_dict())) is not None:
            raise CheckpointError(f"{path} holds non-finite weights ({bad} has NaN or infinity); not served")
        model = model.to(self.runtime.device, memory_format=self.runtime.memory_format).eval()
        loaded = LoadedModel(model, info, path, stamp)
        if not self.probe(loaded):  # also the warm-up: the first request is not slow
            raise CheckpointError(f"{path} cannot answer a blank image with finite probabilities; not served")
        return loaded

    def probe(self, loaded: LoadedModel) -> bool:
        """True if the model answers a blank image with finite probabilities."""
        try:
            probs = self.forward(loaded, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        except Exception:
            return False
        return bool(torch.isfinite(probs).all())

    @torch.inference_mode()
    def forward(self, loaded: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes) in fp32 for uint8 images (N, 3, 32, 32)."""
        x = self.normalize(images.to(self.runtime.device), self.runtime.memory_format)
        with self.runtime.autocast():
            logits = loaded.model(x)
        return torch.softmax(logits.float(), dim=1).cpu()

    def describe(self) -> str:
        rt = self.runtime
        precision = "fp32" if rt.amp_dtype is None else "bf16 autocast"
        layout = "channels-last" if rt.channels_last else "NCHW"
        return f"{rt.device.type}, {precision}, {layout}, {torch.get_num_threads()} thread(s)"


class ModelStore:
    """The current model, swapped atomically."""

    def __init__(self, waiting_for: str) -> None:
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()  # orders concurrent swaps; readers need no lock
        self.waiting_for = waiting_for
        self.last_error: str | None = None
        self.reloads = 0
        self._failure: tuple[LoadedModel, str] | None = None  # the served model could not answer

    def mark_failed(self, loaded: LoadedModel, reason: str) -> None:
        """Inference with ``loaded`` failed: health reports it until it answers again or is replaced."""
        self._failure = (loaded, reason)

    def mark_answering(self, loaded: LoadedModel) -> None:
        failure = self._failure
        if failure is not None and failure[0] is loaded:
            self._failure = None

    @property
    def failure(self) -> str | None:
        """Why the current model cannot answer, if its last batch failed."""
        failure, current = self._failure, self._current
        return failure[1] if failure is not None and failure[0] is current else None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def get(self) -> LoadedModel:
        current = self._current
        if current is None:
            raise NoModelYet(self.waiting_for)
        return current

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        with self._lock:
            old, self._current = self._current, new
            self.reloads += old is not None
            self.last_error = None
        return old


@dataclass
class _Job:
    image: torch.Tensor
    future: asyncio.Future


BatchResult = tuple[torch.Tensor, LoadedModel]


class MicroBatcher:
    """Collects concurrent requests into batches for one inference thread."""

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], BatchResult],
        max_batch: int = 64,
        batch_wait_ms: float = 0.0,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedcifar-infer")
        self.batches = 0
        self.images = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="fedcifar-microbatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, image: torch.Tensor) -> tuple[torch.Tensor, LoadedModel]:
        """Probabilities for one uint8 image (3, 32, 32), and the model that produced them."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(image, future))
        return await future

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        deadline = time.monotonic() + self.batch_wait
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [job for job in jobs if not job.future.done()]  # drop requests whose client went away

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            batch = torch.stack([job.image for job in jobs])
            try:
                probs, loaded = await loop.run_in_executor(self._executor, self.run_batch, batch)
            except Exception as exc:  # delivered to each request; the loop keeps serving
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(jobs)
            for i, job in enumerate(jobs):
                if not job.future.done():
                    job.future.set_result((probs[i], loaded))

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()


def run_checked(predictor: Predictor, store: ModelStore, batch: torch.Tensor) -> BatchResult:
    """One batch through the current model. A failure or a non-finite answer is recorded, then raised."""
    loaded = store.get()  # read once: the whole batch sees one model
    try:
        probs = predictor.forward(loaded, batch)
    except Exception as exc:
        reason = f"inference failed: {one_line(exc)}"
        store.mark_failed(loaded, reason)
        raise InferenceFailed(reason) from exc
    if not bool(torch.isfinite(probs).all()):
        reason = "the served model answers with NaN or infinity"
        store.mark_failed(loaded, reason)
        raise InferenceFailed(reason)
    store.mark_answering(loaded)
    return probs, loaded
