"""The reference for the load test: a web app built the way the paper describes its deployment.

One FastAPI endpoint loads the uploaded image with PIL, applies torchvision transforms
(Resize to 32x32, ToTensor, Normalize) and runs the fp32 model on that single image, inside
the ``async`` endpoint: no batching, no thread offload, default torch threads. The model is
``model_global.pth`` read with ``torch.load(weights_only=True)``.

    python benchmarks/naive_app.py --model runs/paper/model_global.pth --port 8001

``benchmarks/loadgen.py`` starts it by itself; it is not part of the package.
"""

from __future__ import annotations

import argparse
import io

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torchvision import transforms

from fedcifar.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD
from fedcifar.model import build_model


def create_naive_app(model_path: str, labels: list[str]) -> FastAPI:
    model = build_model("batch")
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    model.eval()
    transform = transforms.Compose(
        [transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
    )
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)):  # noqa: B008 - the tutorial form
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        x = transform(image).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        top = torch.topk(probs, 5)
        return {
            "predictions": [
                {"class_id": int(i), "label": labels[int(i)], "probability": float(p)}
                for p, i in zip(top.values, top.indices, strict=True)
            ]
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model_global.pth")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    try:
        from fedcifar.serve.labels import read_fine_labels

        labels = list(read_fine_labels())
    except Exception:  # labels are cosmetic for a load test
        labels = [str(i) for i in range(100)]
    uvicorn.run(create_naive_app(args.model, labels), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
