"""Hot reload: watch the model file and swap in each new version once it is fully loaded.

Training writes ``model_global.safetensors`` with a temp file and ``os.replace``, so the path
always names a complete file; a new version shows as a new (mtime, size, inode). Polling
the stamp once a second costs one ``stat`` and needs no inotify.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

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
        stamp = FileStamp.of(self.path)
        current = self.store.current
        if stamp is None or stamp == self._failed or (current is not None and current.stamp == stamp):
            return False
        try:
            loaded = self.predictor.load(self.path)
        except ModelChanged:
            return False  # the next poll loads the newer version
        except CheckpointError as exc:
            if FileStamp.of(self.path) != stamp:  # replaced while we read it: try the newer one next time
                return False
            self._failed = stamp
            self.store.last_error = str(exc)
            log.warning("fedcifar serve: keeping the current model; %s", exc)
            return False
        old = self.store.swap(loaded)
        previous = f"round {old.round}" if old is not None else "no model"
        log.info("fedcifar serve: now serving round %s (was %s) from %s", loaded.round, previous, self.path)
        return True

    async def run(self) -> None:
        """Poll forever (cancel to stop); loading happens in a worker thread."""
        while True:
            try:
                await asyncio.to_thread(self.check_once)
            except Exception:  # never let the watcher die; the next poll retries
                log.exception("fedcifar serve: model reload failed")
            await asyncio.sleep(self.interval)
