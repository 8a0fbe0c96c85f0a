"""For real CIFAR-100 test images, the served top-5 equals the saved model's offline top-5.

The offline side is written out here on purpose, from the training code's pieces only:
``load_model`` (the offline loader: the architecture from the file's metadata) + ``Normalize``
on the uint8 test tensor, as training evaluation feeds the model. The served side gets the same images as PNG uploads.
"""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from fedcifar.data.augment import Normalize
from fedcifar.runtime import bf16_supported
from fedcifar.serve.labels import read_fine_labels
from fedcifar.serve.main import create_app
from fedcifar.serve.settings import ServeSettings
from fedcifar.track.checkpoint import load_model
from helpers import encode

INDICES = list(range(0, 10_000, 1250))  # 8 test images across the split


def offline_top5(model_file, images: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    model, _meta = load_model(model_file)
    probs = []
    with torch.inference_mode():
        for img in images:  # one at a time, as each upload is served alone here
            x = Normalize()(img[None])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                probs.append(torch.softmax(model(x).float(), dim=1)[0])
    top = torch.stack(probs).topk(5, dim=1)
    return top.indices, top.values


@pytest.mark.parametrize(
    ("precision", "channels_last", "tol"),
    [
        ("fp32", False, 1e-6),  # the offline computation exactly
        ("bf16", False, 1e-6),  # bf16 autocast offline too: exactly
        ("bf16", True, 2e-3),  # the served default: channels-last kernels round differently, same classes
    ],
)
def test_served_top5_equals_offline_top5(cifar, model_file, precision, channels_last, tol):
    if precision == "bf16" and not bf16_supported(torch.device("cpu")):
        pytest.skip("no native bf16 on this CPU")
    images = cifar.test_x[INDICES]
    labels = read_fine_labels()
    assert labels == cifar.classes  # the meta file's names are torchvision's class names
    want_ids, want_probs = offline_top5(model_file, images, bf16=precision == "bf16")

    settings = ServeSettings(model_path=model_file, precision=precision, channels_last=channels_last)
    with TestClient(create_app(settings)) as client:
        for img, ids, probs in zip(images, want_ids, want_probs, strict=True):
            r = client.post("/api/predict", files={"file": ("cifar.png", encode(img), "image/png")})
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            assert [p["class_id"] for p in preds] == ids.tolist()
            assert [p["label"] for p in preds] == [labels[i] for i in ids.tolist()]
            assert [p["probability"] for p in preds] == pytest.approx(probs.tolist(), abs=tol)
