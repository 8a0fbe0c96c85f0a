"""A broken model file is never served, and ``/health`` is 200 only while predictions can be answered.

Model files here are exported as training exports them, then damaged: a NaN or an infinity in
the weights, or metadata of the wrong shape, type or range. ``--model`` refuses them with one
line and exit 2; a server following a run keeps its current model, logs the bad file once in
one line and does not retry it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedcifar.cli import main
from fedcifar.serve.main import create_app
from fedcifar.serve.predictor import ModelStore, Predictor, inference_runtime
from fedcifar.serve.settings import ServeSettings
from fedcifar.serve.watcher import ModelWatcher
from helpers import encode

SMALL = "resnet20"  # 0.27 M parameters: these tests are about the checks, not the network
GOOD_META = {"arch": SMALL, "norm": "batch", "num_classes": 100, "round": 2, "test_acc": 0.02}
BAD_FILES = {
    "nan-weight": {"poison": float("nan")},
    "inf-weight": {"poison": float("inf")},
    "meta-not-an-object": {"meta": "[]"},
    "meta-not-json": {"meta": "{round: 1"},
    "num-classes-a-string": {"meta": {**GOOD_META, "num_classes": "x"}},
    "num-classes-not-the-labels": {"meta": {**GOOD_META, "num_classes": 10}},
    "round-a-string": {"meta": {**GOOD_META, "round": "x"}},
    "round-negative": {"meta": {**GOOD_META, "round": -1}},
    "round-a-bool": {"meta": {**GOOD_META, "round": True}},
    "test-acc-a-string": {"meta": {**GOOD_META, "test_acc": "x"}},
    "test-acc-out-of-range": {"meta": {**GOOD_META, "test_acc": 7.5}},
    "unknown-arch": {"meta": {**GOOD_META, "arch": "vgg11"}},
}
EXPECTED_REASON = {
    "nan-weight": "non-finite weights",
    "inf-weight": "non-finite weights",
    "meta-not-an-object": "must be a JSON object",
    "meta-not-json": "metadata is not valid JSON",
    "num-classes-a-string": "num_classes",
    "num-classes-not-the-labels": "10 classes but the server has 100 label names",
    "round-a-string": "round in model metadata",
    "round-negative": "round in model metadata",
    "round-a-bool": "round in model metadata",
    "test-acc-a-string": "test_acc",
    "test-acc-out-of-range": "test_acc",
    "unknown-arch": "unknown model architecture",
}


def damage(path: Path, meta=None, poison: float | None = None) -> None:
    """Rewrite a model file in place (atomically, as training would) with other metadata or a poisoned weight."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    if poison is not None:
        name = next(k for k in tensors if k.endswith("conv1.weight"))
        tensors[name].view(-1)[0] = poison
    if meta is not None:
        metadata["fedcifar"] = meta if isinstance(meta, str) else json.dumps(meta)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def png() -> bytes:
    return encode(Image.new("RGB", (32, 32), (10, 200, 30)))


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_model_option_refuses_a_broken_file_in_one_line(exporter, tmp_path, capsys, case):
    path = exporter(tmp_path, arch=SMALL)
    damage(path, **BAD_FILES[case])
    code = main(["serve", "--model", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("fedcifar: error: "), err
    assert EXPECTED_REASON[case] in err


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_watcher_keeps_the_current_model_and_logs_a_bad_file_once(exporter, tmp_path, caplog, case):
    path = exporter(tmp_path, seed=0, round_=1, arch=SMALL)
    store = ModelStore(waiting_for="test")
    watcher = ModelWatcher(store, Predictor(inference_runtime("fp32"), num_labels=100), path)
    assert watcher.check_once() and store.current.round == 1
    served = store.current
    damage(path, **BAD_FILES[case])
    with caplog.at_level(logging.INFO, logger="fedcifar.serve"):
        for _ in range(4):  # polls: the bad version is tried once, then left alone until it changes
            assert not watcher.check_once()
    assert store.current is served
    records = [r for r in caplog.records if r.name == "fedcifar.serve"]
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "\n" not in record.getMessage() and "keeping round 1" in record.getMessage()
    assert EXPECTED_REASON[case] in record.getMessage() and EXPECTED_REASON[case] in store.last_error

    exporter(tmp_path, seed=1, round_=3, arch=SMALL)  # the next good round is served again
    assert watcher.check_once() and store.current.round == 3


def test_a_nan_round_never_reaches_a_request(exporter, fake_labels, tmp_path):
    """The issue's scenario: round 2 arrives with a NaN; round 1 keeps answering and /health stays truthful."""
    path = exporter(tmp_path, round_=1, arch=SMALL)
    settings = ServeSettings(run_dir=tmp_path, labels=fake_labels, precision="fp32", reload_interval=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        staged = exporter(tmp_path / "staging", seed=1, round_=2, arch=SMALL)
        damage(staged, poison=float("nan"))  # poisoned before it lands: the watcher never sees a good round 2
        staged.replace(path)
        deadline = time.monotonic() + 30
        while client.get("/api/model").json()["last_error"] is None:
            assert time.monotonic() < deadline, "the NaN model file was never looked at"
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "ok", "model_round": 1}
        r = client.post("/api/predict", files={"file": ("x.png", png(), "image/png")})
        assert r.status_code == 200 and r.json()["model_round"] == 1
        info = client.get("/api/model").json()
        assert info["round"] == 1 and "non-finite weights" in info["last_error"]
        assert str(tmp_path) not in json.dumps(info)  # the reason names the file, not the server's paths


def test_health_is_503_while_predictions_fail_and_recovers(exporter, fake_labels, tmp_path, monkeypatch):
    exporter(tmp_path, round_=4, arch=SMALL)
    settings = ServeSettings(run_dir=tmp_path, labels=fake_labels, precision="fp32", reload_interval=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        predictor = client.app.state.serve.predictor
        working = predictor.forward
        assert client.get("/health").status_code == 200

        def nan_forward(loaded, images):
            return torch.full((images.shape[0], 100), float("nan"))

        for broken, reason in ((nan_forward, "NaN or infinity"), (lambda *a: 1 / 0, "ZeroDivisionError")):
            monkeypatch.setattr(predictor, "forward", broken)
            r = client.post("/api/predict", files={"file": ("x.png", png(), "image/png")})
            assert r.status_code == 503 and reason in r.json()["detail"] and r.headers["retry-after"]
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            assert reason in health.json()["detail"] and health.json()["model_round"] == 4
            assert client.get("/api/model").json()["status"] == "degraded"

            monkeypatch.setattr(predictor, "forward", working)  # the watcher's probe sees it answer again
            deadline = time.monotonic() + 30
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "health never recovered"
                time.sleep(0.05)
            assert client.post("/api/predict", files={"file": ("x.png", png(), "image/png")}).status_code == 200
