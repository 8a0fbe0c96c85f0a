"""Hostile uploads and exposure: bombs refused from the header, reduced-size decoding, bounded decodes with 503,
413s that write-first clients can read, and nothing of the server's file system shown to clients.

Memory and latency figures under load come from ``benchmarks/hostile.py``, not from these tests.
"""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from fedcifar.serve import preprocess
from fedcifar.serve.decoder import DecodePool, DecoderBusy
from fedcifar.serve.main import create_app
from fedcifar.serve.preprocess import ImageRejected, decode_image, open_image
from fedcifar.serve.settings import ServeSettings
from helpers import encode

ROOT = Path(__file__).resolve().parents[2]


def declare_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with another size in its IHDR (and a valid CRC): a bomb's header without its cost."""
    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def multipart(data: bytes, boundary: str = "hostile") -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


# -- decoding ---------------------------------------------------------------------------------------------------


def test_the_issues_16bit_bomb_is_refused_from_its_header():
    bomb = declare_size(encode(Image.new("I;16", (16, 16))), 7999, 7999)
    with pytest.raises(ImageRejected) as info:
        open_image(bomb)
    assert info.value.status == 413 and "63,984,001 pixels" in info.value.reason
    assert "16,777,216" in info.value.reason  # the default limit: 4096 x 4096


def test_a_sequential_jpeg_may_declare_more_because_it_is_decoded_smaller():
    limit = 256 * 256
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8))
    img = open_image(encode(photo, "JPEG"), limit)  # 250,000 declared, drafted to 250 x 250
    assert img.size == (250, 250)
    assert decode_image(encode(photo, "JPEG"), limit).shape == (3, 32, 32)
    # A progressive JPEG holds all its coefficients at full size, and a PNG has no reduced decode.
    for data in (encode(photo, "JPEG", progressive=True), encode(photo, "PNG")):
        with pytest.raises(ImageRejected) as info:
            decode_image(data, limit)
        assert info.value.status == 413 and "250,000 pixels" in info.value.reason


def test_large_jpegs_are_decoded_at_reduced_size():
    img = open_image(encode(Image.new("RGB", (2048, 1536), (200, 10, 10)), "JPEG"))
    assert img.size == (256, 192)  # DCT scale 1/8: what is decoded, not what is declared


def reference(img: Image.Image) -> torch.Tensor:
    """The straightforward full-resolution pipeline: composite or scale at full size, then fit."""
    if img.mode == "I;16":
        wide = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "P"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = ImageOps.fit(img.convert("RGB"), (32, 32), method=Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P"])
def test_reduced_decoding_matches_the_full_resolution_pipeline(mode):
    h, w = 600, 900
    smooth = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 1, w)) / 2  # a gradient, as photos mostly are
    if mode == "I;16":
        img = Image.fromarray((smooth * 65535).astype(np.uint16))
    else:
        rgba = np.stack([smooth * 255, smooth[::-1] * 255, np.full((h, w), 90.0), smooth[:, ::-1] * 255], -1)
        img = Image.fromarray(rgba.astype(np.uint8), "RGBA")
        if mode == "P":
            img = img.convert("RGB").quantize(64, dither=Image.Dither.NONE)
    data = encode(img)
    got = decode_image(data).int()
    want = reference(Image.open(io.BytesIO(data))).int()
    assert got.shape == want.shape == (3, 32, 32)
    assert (got - want).abs().max() <= 3, (got - want).abs().max()


def test_exif_orientation_is_applied_to_the_reduced_image():
    pixels = np.zeros((300, 600, 3), dtype=np.uint8)
    pixels[:150] = (255, 0, 0)  # red on top, blue below: a camera held sideways
    pixels[150:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    out = decode_image(encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)).int()
    # Rotated upright, red is on the right half, blue on the left.
    assert out[0, :, 24:].float().mean() > 200 and out[2, :, :8].float().mean() > 200


# -- bounded decodes --------------------------------------------------------------------------------------------


def test_decode_pool_runs_at_most_workers_plus_queue_and_refuses_more():
    import asyncio

    release = threading.Event()
    started = threading.Semaphore(0)

    def slow(x):
        started.release()
        release.wait(10)
        return x

    async def scenario():
        pool = DecodePool(workers=1, queue=1)
        first = asyncio.ensure_future(pool.run(slow, 1))
        second = asyncio.ensure_future(pool.run(slow, 2))
        await asyncio.sleep(0)
        assert await asyncio.to_thread(started.acquire, True, 10)
        with pytest.raises(DecoderBusy, match="server busy"):
            await pool.run(slow, 3)
        assert pool.pending == 2 and pool.refused == 1
        release.set()
        assert await asyncio.gather(first, second) == [1, 2]
        assert pool.pending == 0
        assert await pool.run(slow, 4) == 4
        pool.shutdown()

    asyncio.run(scenario())


def test_full_decode_pool_answers_503_and_health_does_not_wait(model_file, fake_labels, live_server, monkeypatch):
    release = threading.Event()
    real_finish = preprocess.finish_image

    def blocked_finish(img):
        release.wait(30)
        return real_finish(img)

    monkeypatch.setattr("fedcifar.serve.routers.predict.finish_image", blocked_finish)
    settings = ServeSettings(
        model_path=model_file, labels=fake_labels, precision="fp32", decode_workers=1, decode_queue=1
    )
    body, ctype = multipart(encode(Image.new("RGB", (300, 200), (0, 90, 0))))  # above the inline size
    with live_server(settings) as server:

        def post() -> tuple[int, dict, dict]:
            req = urllib.request.Request(server.url + "/api/predict", body, {"Content-Type": ctype})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, dict(r.headers), json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), json.loads(e.read())

        results: list = []
        holders = [threading.Thread(target=lambda: results.append(post())) for _ in range(2)]
        for t in holders:
            t.start()
        state = server.server.config.app.state.serve
        for _ in range(400):  # both admitted: one decoding, one queued
            if state.decoder.pending == 2:
                break
            threading.Event().wait(0.05)
        assert state.decoder.pending == 2
        status, headers, answer = post()  # a third is refused at once, not queued
        assert status == 503 and headers["retry-after"] == "1" and "server busy" in answer["detail"]
        for path in ("/health", "/api/model"):  # answered on the event loop while every decode thread is taken
            with urllib.request.urlopen(server.url + path, timeout=10) as r:
                assert r.status == 200
        release.set()
        for t in holders:
            t.join(60)
        assert sorted(r[0] for r in results) == [200, 200]


# -- oversize bodies --------------------------------------------------------------------------------------------


def test_write_first_clients_see_the_413(model_file, fake_labels, live_server):
    """urllib sends the whole body before reading: it must get the 413 and its reason, not a reset."""
    settings = ServeSettings(model_path=model_file, labels=fake_labels, precision="fp32", max_upload_bytes=1_000_000)
    body, ctype = multipart(b"\x89PNG" + bytes(3_000_000))
    with live_server(settings) as server:
        for label, data in (
            ("declared", body),
            ("chunked", iter([body[i : i + 65536] for i in range(0, 3_000_000, 65536)])),
        ):
            headers = {"Content-Type": ctype}
            if label == "chunked":
                headers["Transfer-Encoding"] = "chunked"
            req = urllib.request.Request(server.url + "/api/predict", data, headers)
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=60)
            assert info.value.code == 413, label
            assert "1,000,000-byte upload limit" in json.loads(info.value.read())["detail"], label
        with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
            assert r.status == 200


# -- exposure ---------------------------------------------------------------------------------------------------


def test_no_absolute_paths_reach_clients(exporter, fake_labels, tmp_path):
    run_dir = tmp_path / "secret-place" / "my-run"
    run_dir.mkdir(parents=True)
    settings = ServeSettings(run_dir=run_dir, labels=fake_labels, precision="fp32", reload_interval=0.05)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        waiting = [client.get("/health"), client.get("/api/model"), client.get("/api/run")]
        assert waiting[0].status_code == 503 and "my-run" in waiting[0].json()["detail"]
        exporter(run_dir, round_=2)
        client.app.state.serve  # noqa: B018 - the app is up
        for _ in range(400):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        serving = [client.get("/health"), client.get("/api/model"), client.get("/api/run")]
    for r in waiting + serving:
        assert "secret-place" not in r.text and str(tmp_path) not in r.text, r.text
    info = serving[1].json()
    assert info["status"] == "serving" and info["file"] == "model_global.safetensors"
    assert info["source"] == "run my-run" and serving[2].json()["run_dir"] == "my-run"


def _defaults(text: str) -> str:
    """Compose's ${VAR:-default} with the defaults taken, as an unset environment gives them."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_compose_publishes_on_loopback_and_mounts_runs_read_only_for_the_web_app():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    web = services["fl-webapp"]
    for port in web["ports"]:
        host, _, _ = _defaults(port).rpartition(":")
        assert host.split(":")[0] == "127.0.0.1", port
    mounts = {_defaults(v).split(":")[1]: _defaults(v) for v in web["volumes"]}
    assert mounts["/runs"].endswith(":ro") and mounts["/data"].endswith(":ro")
    training = services["fl-training"]["volumes"]  # training, and only training, writes the runs volume
    assert any(_defaults(v) == "runs:/runs" for v in training)
