"""API behaviour through FastAPI's TestClient: good uploads, every kind of bad one, and garbage."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import encode, png_from_chunks

rng = np.random.default_rng(0)


def rgb(w: int = 40, h: int = 30) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_16bit_rgb(w: int = 8, h: int = 8) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    raw = b"".join(b"\x00" + rng.integers(0, 65536, w * 3, dtype=np.uint16).astype(">u2").tobytes() for _ in range(h))
    return png_from_chunks(struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0), raw)


def png_bomb(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny PNG that declares w x h pixels (its data is one compressed row)."""
    return png_from_chunks(struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0), b"\x00" * (w + 1))


def gif_two_frames() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def post(client, data: bytes, name: str = "x.png", ctype: str = "application/octet-stream"):
    return client.post("/api/predict", files={"file": (name, data, ctype)})


def assert_top5(body: dict, labels) -> None:
    preds = body["predictions"]
    assert len(preds) == 5
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-5
    assert len({p["class_id"] for p in preds}) == 5
    for p in preds:
        assert labels[p["class_id"]] == p["label"]


GOOD_UPLOADS = {
    "png-rgb": lambda: encode(rgb(), "PNG"),
    "png-rgba": lambda: encode(rgb().convert("RGBA"), "PNG"),
    "png-gray": lambda: encode(rgb().convert("L"), "PNG"),
    "png-gray-alpha": lambda: encode(rgb().convert("LA"), "PNG"),
    "png-palette": lambda: encode(rgb().convert("P"), "PNG"),
    "png-palette-transparent": lambda: encode(rgb().convert("P"), "PNG", transparency=0),
    "png-16bit-gray": lambda: encode(Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16)), "PNG"),
    "png-16bit-rgb": png_16bit_rgb,
    "png-1bit": lambda: encode(rgb().convert("1"), "PNG"),
    "jpeg": lambda: encode(rgb(300, 200), "JPEG", quality=90),
    "jpeg-gray": lambda: encode(rgb().convert("L"), "JPEG"),
    "jpeg-cmyk": lambda: encode(rgb().convert("CMYK"), "JPEG"),
    "webp": lambda: encode(rgb(), "WEBP"),
    "webp-rgba": lambda: encode(rgb().convert("RGBA"), "WEBP", lossless=True),
    "gif-animated": gif_two_frames,
    "bmp": lambda: encode(rgb(), "BMP"),
    "tiny-1x1": lambda: encode(rgb(1, 1), "PNG"),
    "panorama": lambda: encode(rgb(1000, 20), "PNG"),
}


def labels_of(client) -> tuple[str, ...]:
    return client.app.state.serve.labels


@pytest.mark.parametrize("kind", sorted(GOOD_UPLOADS))
def test_predict_accepts_every_image_kind(client, kind):
    r = post(client, GOOD_UPLOADS[kind]())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_round"] == 7
    assert_top5(body, labels_of(client))


def test_health_model_docs(client):
    assert client.get("/health").json() == {"status": "ok", "model_round": 7}
    info = client.get("/api/model").json()
    assert info["status"] == "serving"
    assert (info["arch"], info["norm"], info["num_classes"], info["round"]) == ("resnet18", "batch", 100, 7)
    assert info["test_acc"] == pytest.approx(0.07)
    assert "fp32" in info["inference"]
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/api/predict" in schema["paths"] and "/api/model" in schema["paths"]
    assert client.get("/").status_code == 200 and "Classify" in client.get("/").text
    assert client.get("/static/predict.js").status_code == 200


BAD_UPLOADS = {
    "text": (b"hello, this is not an image\n" * 20, 415, "not an image"),
    "empty": (b"", 400, "empty"),
    "truncated-png": (encode(rgb(64, 64), "PNG")[:300], 400, "truncated"),
    "truncated-jpeg": (encode(rgb(64, 64), "JPEG")[:400], 400, "truncated"),
    "corrupt-png-header": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "corrupt"),
    "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "not an image"),
    "tiff-not-accepted": (encode(rgb(), "TIFF"), 415, "supported format"),
    "bomb-png": (png_bomb(), 413, "decompression bomb"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_reason_and_the_server_keeps_serving(client, kind):
    data, status, reason = BAD_UPLOADS[kind]
    r = post(client, data)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert reason in detail.lower()
    assert "Traceback" not in r.text
    ok = post(client, GOOD_UPLOADS["png-rgb"]())
    assert ok.status_code == 200


def test_missing_field_wrong_field_and_wrong_method(client):
    r = client.post("/api/predict")
    assert r.status_code == 422 and "missing form field 'file'" in r.json()["detail"]
    r = client.post("/api/predict", files={"image": ("x.png", encode(rgb(), "PNG"), "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = client.post("/api/predict", json={"file": "abc"})
    assert r.status_code == 422
    r = client.get("/api/predict")
    assert r.status_code == 405 and r.json()["detail"] == "Method Not Allowed"
    r = client.put("/api/predict", files={"file": ("x.png", encode(rgb(), "PNG"), "image/png")})
    assert r.status_code == 405


def test_over_the_size_limit(client):
    limit = client.app.state.serve.settings.max_upload_bytes  # 1 MB in this fixture
    # A valid image just over the limit: rejected by the endpoint's own check.
    big = encode(rgb(16, 16), "PNG") + b"\x00" * (limit + 10)
    r = post(client, big)
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    # Far over, declared in Content-Length: refused before the body is read.
    r = post(client, b"\x00" * (3 * limit))
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    # Far over, chunked (no Content-Length): cut off once past the limit.
    boundary = "xyz"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()

    def chunks():
        yield head
        for _ in range(50):
            yield b"\x00" * (limit // 10)

    r = client.post(
        "/api/predict", content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    assert post(client, GOOD_UPLOADS["png-rgb"]()).status_code == 200


def test_pixel_limit_is_configurable(model_file, fake_labels):
    from fastapi.testclient import TestClient

    from fedcifar.serve.main import create_app
    from fedcifar.serve.settings import ServeSettings

    settings = ServeSettings(model_path=model_file, labels=fake_labels, precision="fp32", max_pixels=40 * 40)
    with TestClient(create_app(settings)) as c:
        assert post(c, encode(rgb(40, 40), "PNG")).status_code == 200
        r = post(c, encode(rgb(41, 40), "PNG"))
        assert r.status_code == 413 and "1,640 pixels" in r.json()["detail"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_garbage_bytes_never_cause_a_server_error(client, data):
    r = post(client, data)
    assert r.status_code in (200, 400, 413, 415), r.text
    assert "detail" in r.json() or r.status_code == 200


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "BMP"]),
    cut=st.integers(min_value=0, max_value=2000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
)
def test_mangled_images_never_cause_a_server_error(client, fmt, cut, flips):
    data = bytearray(encode(rgb(24, 24), fmt))
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut)])
    r = post(client, data)
    assert r.status_code in (200, 400, 413, 415), r.text
    if r.status_code == 200:
        assert_top5(r.json(), labels_of(client))
