"""Hot reload: watch the model file and swap in each new version once it is fully loaded and checked.

Training writes ``model_global.safetensors`` with a temp file and ``os.replace``, so the path
always names a complete file; a new version shows as a new (mtime, size, inode). Polling
the stamp once a second costs one ``stat`` and needs no inotify.

A version that cannot be served (unreadable, bad metadata, non-finite weights) is logged once,
in one line, and never retried: the current model stays until a new version arrives. If the
current model's last batch failed, each poll probes it with a blank image, so ``/health``
recovers as soon as it answers again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fedcifar.errors import one_line
from fedcifar.serve.predictor import FileStamp, ModelChanged, ModelStore, Predictor
from fedcifar.track.checkpoint import CheckpointError

log = logging.getLogger("fedcifar.serve")


class ModelWatcher:
    def __init__(self, store: ModelStore, predictor: Predictor, path: Path, interval: float = 1.0) -> None:
        self.store = store
        self.predictor = predictor
        self.path = Path(path)
        self.interval = interval
        self._failed: FileStamp | None = None  # a version that did not load; not retried until it changes

    def check_once(self) -> bool:
        """Load and swap in the file if it changed since the served version. Blocking; True if swapped."""
        self._reprobe()
        stamp = FileStamp.of(self.path)
        current = self.store.current
        if stamp is None or stamp == self._failed or (current is not None and current.stamp == stamp):
            return False
        try:
            loaded = self.predictor.load(self.path)
        except ModelChanged:
            return False  # the next poll loads the newer version
        except Exception as exc:  # anything wrong with this version: refuse it once, keep the current model
            if FileStamp.of(self.path) != stamp:  # replaced while we read it: try the newer one next time
                return False
            self._failed = stamp
            reason = str(exc) if isinstance(exc, CheckpointError) else f"{self.path}: {one_line(exc)}"
            self.store.last_error = reason
            keeping = f"round {current.round}" if current is not None else "no model"
            log.warning("fedcifar serve: not serving the new model file, keeping %s: %s", keeping, reason)
            return False
        old = self.store.swap(loaded)
        previous = f"round {old.round}" if old is not None else "no model"
        log.info("fedcifar serve: now serving round %s (was %s) from %s", loaded.round, previous, self.path)
        return True

    def _reprobe(self) -> None:
        current = self.store.current
        if current is not None and self.store.failure is not None and self.predictor.probe(current):
            self.store.mark_answering(current)

    async def run(self) -> None:
        """Poll forever (cancel to stop); loading happens in a worker thread."""
        while True:
            try:
                await asyncio.to_thread(self.check_once)
            except Exception as exc:  # never let the watcher die; one line, the next poll retries
                log.warning("fedcifar serve: model check failed: %s", one_line(exc))
            await asyncio.sleep(self.interval)
