"""What a server is configured with: where the model comes from, limits and inference knobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    max_pixels: int = 64_000_000  # declared width x height; above it the upload is a decompression bomb
    precision: Precision = "auto"
    channels_last: bool = True
    max_batch: int = 64
    batch_wait_ms: float = 0.0  # extra wait for company; 0: batches form only from requests that queued meanwhile
    reload_interval: float = 1.0  # seconds between checks of the model file

    def __post_init__(self) -> None:
        if (self.run_dir is None) == (self.model_path is None):
            raise ValueError("give exactly one of run_dir and model_path")
        if self.max_upload_bytes <= 0 or self.max_pixels <= 0 or self.max_batch <= 0:
            raise ValueError("limits must be positive")

    @property
    def watched_model(self) -> Path:
        """The model file the server loads and watches."""
        if self.model_path is not None:
            return self.model_path
        assert self.run_dir is not None
        return self.run_dir / MODEL_FILE

    @property
    def source(self) -> str:
        return f"run {self.run_dir}" if self.run_dir is not None else f"model {self.model_path}"
