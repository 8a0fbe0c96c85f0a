"""Fixtures for the serving tests: exported models in tmp dirs (never trained), apps and servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from fedcifar.model import ModelSpec
from fedcifar.serve.main import create_app
from fedcifar.serve.settings import ServeSettings
from fedcifar.track.checkpoint import MODEL_FILE, export_global
from httpcheck import free_port

FAKE_LABELS = tuple(f"class_{i:02d}" for i in range(100))


def export_model(run_dir: Path, seed: int = 0, round_: int = 1, norm: str = "batch", arch: str = "resnet18") -> Path:
    """An untrained model exported exactly as training exports a round's model."""
    spec = ModelSpec(arch, norm, 100)
    model = spec.build(seed=seed)
    info = {**spec.to_dict(), "round": round_, "test_acc": 0.01 * round_}
    export_global(Path(run_dir), model.state_dict(), info)
    return Path(run_dir) / MODEL_FILE


@pytest.fixture(scope="session")
def exporter() -> Callable[..., Path]:
    """``exporter(run_dir, seed=0, round_=1)`` writes a model as training exports one."""
    return export_model


@pytest.fixture(scope="session")
def fake_labels() -> tuple[str, ...]:
    return FAKE_LABELS


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    return export_model(tmp_path_factory.mktemp("model"), seed=0, round_=7)


@pytest.fixture(scope="session")
def client(model_file) -> Iterator[TestClient]:
    """An app serving ``model_file`` in fp32 with fake labels; shared by the API tests."""
    settings = ServeSettings(model_path=model_file, labels=FAKE_LABELS, precision="fp32", max_upload_bytes=1_000_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


class LiveServer:
    """uvicorn in a background thread, for tests that need real concurrency or a browser."""

    def __init__(self, settings: ServeSettings) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server() -> Callable[[ServeSettings], LiveServer]:
    return LiveServer


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """Other suites run beside these on 2 cores: inference tests need no more than 2 threads."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
