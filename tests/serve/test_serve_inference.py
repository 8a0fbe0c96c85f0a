"""Micro-batching off the event loop, hot reload, atomic swaps, and waiting for the first round."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from fedcifar.model import build_model
from fedcifar.serve.main import create_app
from fedcifar.serve.predictor import MicroBatcher, Predictor, inference_runtime
from fedcifar.serve.settings import ServeSettings
from fedcifar.track.checkpoint import MODEL_FILE, export_global
from helpers import random_png, wait_for


def wait_until(predicate, timeout: float = 20.0) -> None:
    wait_for(predicate, timeout, interval=0.05)


def test_microbatcher_batches_concurrent_requests_off_the_event_loop():
    seen: list[tuple[int, str]] = []

    def run_batch(batch: torch.Tensor):
        seen.append((len(batch), threading.current_thread().name))
        time.sleep(0.05)  # a slow model: newcomers queue up meanwhile
        return batch.float().flatten(1)[:, :3], "model"

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch=8, batch_wait_ms=1.0)
        await batcher.start()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        images = [torch.full((3, 32, 32), i, dtype=torch.uint8) for i in range(20)]
        results = await asyncio.gather(*(batcher.submit(img) for img in images))
        tick_task.cancel()
        await batcher.stop()
        return results, ticks

    results, ticks = asyncio.run(scenario())
    for i, (row, model) in enumerate(results):  # each caller gets its own row back
        assert model == "model" and torch.equal(row, torch.full((3,), float(i)))
    sizes = [n for n, _ in seen]
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) <= 4
    assert all(name.startswith("fedcifar-infer") for _, name in seen)
    assert ticks >= 20  # the loop kept running while batches ran (>= 150 ms of model time)


def test_microbatcher_delivers_model_errors_and_keeps_going():
    calls = 0

    def run_batch(batch):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return torch.zeros(len(batch), 2), "m"

    async def scenario():
        batcher = MicroBatcher(run_batch, max_batch=4, batch_wait_ms=0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(torch.zeros(3, 32, 32, dtype=torch.uint8))
        row, _ = await batcher.submit(torch.zeros(3, 32, 32, dtype=torch.uint8))
        await batcher.stop()
        return row

    assert asyncio.run(scenario()).shape == (2,)


def test_batched_answers_equal_single_answers(model_file):
    predictor = Predictor(inference_runtime("fp32"))
    loaded = predictor.load(model_file)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batched = predictor.forward(loaded, images)
    single = torch.cat([predictor.forward(loaded, images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert torch.equal(batched.topk(5).indices, single.topk(5).indices)


def test_waits_for_the_first_round_then_hot_reloads(tmp_path, fake_labels, exporter):
    run_dir = tmp_path / "run"  # does not even exist yet, as when `make run` starts
    settings = ServeSettings(run_dir=run_dir, labels=fake_labels, precision="fp32", reload_interval=0.05)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "waiting"
        r = client.post("/api/predict", files={"file": ("a.png", random_png(0), "image/png")})
        assert r.status_code == 503 and "waiting for the first round" in r.json()["detail"]
        assert r.headers["retry-after"] == "10"
        assert client.get("/api/model").json()["status"] == "waiting"
        assert client.get("/api/run").json()["state"] == "waiting"

        exporter(run_dir, seed=0, round_=1)
        wait_until(lambda: client.get("/health").status_code == 200)
        r = client.post("/api/predict", files={"file": ("a.png", random_png(0), "image/png")})
        assert r.status_code == 200 and r.json()["model_round"] == 1

        exporter(run_dir, seed=1, round_=2)
        wait_until(lambda: client.get("/api/model").json()["round"] == 2)
        r = client.post("/api/predict", files={"file": ("a.png", random_png(0), "image/png")})
        assert r.json()["model_round"] == 2
        assert client.get("/api/model").json()["reloads"] == 1


def test_a_corrupt_new_version_keeps_the_old_model(tmp_path, fake_labels, exporter):
    run_dir = tmp_path / "run"
    exporter(run_dir, seed=0, round_=1)
    settings = ServeSettings(run_dir=run_dir, labels=fake_labels, precision="fp32", reload_interval=0.05)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["model_round"] == 1
        tmp = run_dir / ".broken"
        tmp.write_bytes(b"not a safetensors file")
        tmp.replace(run_dir / MODEL_FILE)
        wait_until(lambda: client.get("/api/model").json()["last_error"] is not None)
        assert client.get("/health").json() == {"status": "ok", "model_round": 1}
        r = client.post("/api/predict", files={"file": ("a.png", random_png(0), "image/png")})
        assert r.status_code == 200 and r.json()["model_round"] == 1


def test_swaps_are_atomic_under_concurrent_load(tmp_path, fake_labels, live_server):
    """Models of rounds 1 and 2 alternate on disk while 8 clients post: every answer must be
    exactly what the round it names gives, never a mix of the two."""
    run_dir = tmp_path / "run"
    # Weights built up front, in this thread: model init seeds the global RNG, which is not thread-safe.
    weights = {r: build_model("batch", seed=r).state_dict() for r in (1, 2)}
    predictor = Predictor(inference_runtime("fp32"))
    image = random_png(3)
    pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(image)))).permute(2, 0, 1)[None]
    expected = {}
    for round_ in (1, 2):
        export_global(tmp_path / f"ref{round_}", weights[round_], {"norm": "batch", "round": round_})
        loaded = predictor.load(tmp_path / f"ref{round_}" / MODEL_FILE)
        expected[round_] = predictor.forward(loaded, pixels)[0].topk(5).indices.tolist()
    assert expected[1] != expected[2]

    export_global(run_dir, weights[1], {"norm": "batch", "round": 1})
    settings = ServeSettings(run_dir=run_dir, labels=fake_labels, precision="fp32", reload_interval=0.02)
    with live_server(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        stop = threading.Event()

        def flip():
            i = 0
            while not stop.is_set():
                i += 1
                export_global(run_dir, weights[1 + i % 2], {"norm": "batch", "round": 1 + i % 2})
                time.sleep(0.15)

        def client_loop(_):
            answers = []
            for _ in range(12):
                r = http.post("/api/predict", files={"file": ("x.png", image, "image/png")})
                assert r.status_code == 200, r.text
                body = r.json()
                answers.append((body["model_round"], [p["class_id"] for p in body["predictions"]]))
            return answers

        flipper = threading.Thread(target=flip)
        flipper.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                answers = [a for chunk in pool.map(client_loop, range(8)) for a in chunk]
        finally:
            stop.set()
            flipper.join()
        info = http.get("/api/model").json()
    assert {r for r, _ in answers} == {1, 2}, "both rounds should have answered"
    for round_, classes in answers:
        assert classes == expected[round_]
    assert info["reloads"] >= 2
    assert info["mean_batch"] > 1.0  # concurrent requests were batched
