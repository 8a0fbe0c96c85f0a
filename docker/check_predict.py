"""Post a real CIFAR-100 test image to a running fedcifar server and check the answer.

Used by docker/test-docker.sh from the host: python docker/check_predict.py URL [INDEX]
Exits non-zero with a reason if the answer is not five well-formed, labelled predictions.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.request
import uuid

from PIL import Image

from fedcifar.data.cifar100 import load_cifar100
from fedcifar.serve.labels import read_fine_labels


def post_image(url: str, png: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cifar.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url.rstrip("/") + "/api/predict",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> int:
    url = sys.argv[1]
    index = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    data = load_cifar100(download=False)
    labels = read_fine_labels()
    image = data.test_x[index].permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    answer = post_image(url, buf.getvalue())
    preds = answer["predictions"]
    problems = []
    if len(preds) != 5:
        problems.append(f"{len(preds)} predictions, expected 5")
    probs = [p["probability"] for p in preds]
    if probs != sorted(probs, reverse=True) or not all(0.0 <= p <= 1.0 for p in probs) or sum(probs) > 1.0 + 1e-4:
        problems.append(f"probabilities not a sorted top-5 of a distribution: {probs}")
    for p in preds:
        if not 0 <= p["class_id"] < 100 or labels[p["class_id"]] != p["label"]:
            problems.append(f"label {p['label']!r} does not match class {p['class_id']}")
    if len({p["class_id"] for p in preds}) != len(preds):
        problems.append("repeated classes")
    if answer.get("model_round", 0) < 1:
        problems.append(f"model_round {answer.get('model_round')}, expected >= 1")
    true_label = labels[int(data.test_y[index])]
    shown = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in preds)
    print(f"check_predict: test image {index} ({true_label}) -> round {answer.get('model_round')}: {shown}")
    for problem in problems:
        print(f"check_predict: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
