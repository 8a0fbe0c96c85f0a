"""``POST /api/predict``: one uploaded image in, the top-5 classes out."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, Depends, File, HTTPException, UploadFile
from pydantic import BaseModel, Field

from fedcifar.serve.decoder import RETRY_AFTER_S, DecoderBusy
from fedcifar.serve.deps import ServeState, get_state
from fedcifar.serve.predictor import InferenceFailed, NoModelYet
from fedcifar.serve.preprocess import ImageRejected, finish_image, open_image

TOP_K = 5
INLINE_DECODE_PIXELS = 128 * 128  # larger images are decoded on the decode pool's threads

router = APIRouter(prefix="/api", tags=["predict"])


class Prediction(BaseModel):
    class_id: int = Field(description="CIFAR-100 fine class id, 0-99")
    label: str = Field(description="fine label name from the dataset's meta file")
    probability: float = Field(ge=0.0, le=1.0)


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="the five most likely classes, best first")
    model_round: int = Field(description="federated round of the weights that answered")


class ErrorResponse(BaseModel):
    detail: str


ERRORS = {
    400: {"model": ErrorResponse, "description": "empty, corrupt or truncated image"},
    413: {"model": ErrorResponse, "description": "upload over the size limit, or a decompression bomb"},
    415: {"model": ErrorResponse, "description": "not an image in a supported format"},
    422: {"model": ErrorResponse, "description": "missing multipart field `file`"},
    503: {
        "model": ErrorResponse,
        "description": "no model yet, the model cannot answer, or too many large images are being decoded"
        " (retry after `Retry-After` seconds)",
    },
}


def waiting_error(state: ServeState) -> HTTPException:
    return HTTPException(
        503, f"no model yet: waiting for the first round ({state.store.waiting_for})", {"Retry-After": "10"}
    )


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(
    file: Annotated[UploadFile, File(description="an image: PNG, JPEG, WebP, GIF or BMP")],
    state: Annotated[ServeState, Depends(get_state)],
) -> PredictResponse:
    """Top-5 CIFAR-100 classes for an uploaded image.

    Inference runs on the micro-batcher's thread and decoding of anything larger than a
    thumbnail on the decode pool's few threads (503 when they and their queue are full), so
    the event loop only parses requests and reads image headers. The upload is read from the
    spooled file it was parsed into, never copied whole into memory.
    """
    limit = state.settings.max_upload_bytes
    if state.store.current is None:
        raise waiting_error(state)
    size = file.size if file.size is not None else _spooled_size(file)
    if size > limit:
        raise HTTPException(413, f"file is {size:,} bytes, over the {limit:,}-byte upload limit")
    try:
        img = open_image(file.file, state.settings.max_pixels)  # headers only
        if img.width * img.height <= INLINE_DECODE_PIXELS:
            image = finish_image(img)  # a thumbnail decodes faster than a thread hand-off
        else:
            image = await state.decoder.run(finish_image, img)
    except ImageRejected as exc:
        raise HTTPException(exc.status, exc.reason) from None
    except DecoderBusy as exc:
        raise HTTPException(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None
    try:
        probs, loaded = await state.batcher.submit(image)
    except NoModelYet:
        raise waiting_error(state) from None
    except InferenceFailed as exc:
        raise HTTPException(503, f"the served model cannot answer: {exc}", {"Retry-After": "10"}) from None
    top = torch.topk(probs, k=min(TOP_K, probs.numel()))
    predictions = [
        Prediction(class_id=int(c), label=state.labels[int(c)], probability=float(p))
        for p, c in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    return PredictResponse(predictions=predictions, model_round=loaded.round)


def _spooled_size(file: UploadFile) -> int:
    fp = file.file
    position = fp.tell()
    size = fp.seek(0, 2)
    fp.seek(position)
    return size
