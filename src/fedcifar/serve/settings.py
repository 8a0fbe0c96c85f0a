"""What a server is configured with: where the model comes from, limits and inference knobs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedcifar.serve.preprocess import DEFAULT_MAX_PIXELS
from fedcifar.track.checkpoint import MODEL_FILE

Precision = Literal["auto", "bf16", "fp32"]

MB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Server settings. Exactly one of ``run_dir`` and ``model_path`` is set.

    With ``run_dir`` the server follows a training run: it starts even before the first
    round's model exists and reloads ``model_global.safetensors`` whenever a new round
    lands. With ``model_path`` it serves one file, which must load at start.
    """

    run_dir: Path | None = None
    model_path: Path | None = None
    data_dir: Path | None = None  # holds cifar-100-python/meta (label names); None: $FEDCIFAR_DATA_DIR
    labels: tuple[str, ...] | None = None  # overrides data_dir (tests)
    max_upload_bytes: int = 10 * MB
    max_pixels: int = DEFAULT_MAX_PIXELS  # pixels decoded at most; above it the upload is a decompression bomb
    decode_workers: int = 1  # large images decoded at once (1: measured as fast as 2 here, at half the memory)
    decode_queue: int = 4  # more that may wait for a decode thread; beyond, 503 with Retry-After
    precision: Precision = "auto"
    channels_last: bool = True
    max_batch: int = 64
    batch_wait_ms: float = 0.0  # extra wait for company; 0: batches form only from requests that queued meanwhile
    reload_interval: float = 1.0  # seconds between checks of the model file

    def __post_init__(self) -> None:
        if (self.run_dir is None) == (self.model_path is None):
            raise ValueError("give exactly one of run_dir and model_path")
        for name, value, low in (
            ("max upload size", self.max_upload_bytes, 1),
            ("max pixels", self.max_pixels, 1),
            ("max batch", self.max_batch, 1),
            ("decode workers", self.decode_workers, 1),
            ("decode queue", self.decode_queue, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (math.isfinite(self.batch_wait_ms) and 0 <= self.batch_wait_ms <= 10_000):
            raise ValueError(f"batch wait must be between 0 and 10000 ms, got {self.batch_wait_ms!r}")
        if not (math.isfinite(self.reload_interval) and 0 < self.reload_interval <= 3600):
            raise ValueError(f"reload interval must be > 0 and <= 3600 seconds, got {self.reload_interval!r}")

    @property
    def watched_model(self) -> Path:
        """The model file the server loads and watches."""
        if self.model_path is not None:
            return self.model_path
        assert self.run_dir is not None
        return self.run_dir / MODEL_FILE

    @property
    def source(self) -> str:
        """What is served, without absolute paths (clients see it): ``run NAME`` or ``model FILE``."""
        return f"run {self.run_name}" if self.run_dir is not None else f"model {self.watched_model.name}"

    @property
    def run_name(self) -> str | None:
        return self.run_dir.resolve().name if self.run_dir is not None else None

    def public(self, text: str) -> str:
        """``text`` with the server's absolute paths cut to names, for anything a client can read."""
        for path, name in sorted(self._path_names().items(), key=lambda kv: -len(kv[0])):
            text = text.replace(path, name)
        return text

    def _path_names(self) -> dict[str, str]:
        names: dict[str, str] = {}
        for path in (self.watched_model, self.run_dir):
            if path is not None:
                for form in {str(path), str(Path(path).resolve()), str(Path(path).absolute())}:
                    names[form] = Path(path).resolve().name
        return names
