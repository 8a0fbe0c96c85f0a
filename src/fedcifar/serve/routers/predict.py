"""``POST /api/predict``: one uploaded image in, the top-5 classes out."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, Depends, File, HTTPException, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fedcifar.serve.deps import ServeState, get_state
from fedcifar.serve.predictor import NoModelYet
from fedcifar.serve.preprocess import ImageRejected, finish_image, open_image

TOP_K = 5
INLINE_DECODE_PIXELS = 128 * 128  # larger images are decoded in the threadpool

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
    503: {"model": ErrorResponse, "description": "no model yet: the run's first round has not finished"},
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
    thumbnail in the threadpool, so the event loop only parses requests.
    """
    limit = state.settings.max_upload_bytes
    if state.store.current is None:
        raise waiting_error(state)
    if file.size is not None and file.size > limit:
        raise HTTPException(413, f"file is {file.size:,} bytes, over the {limit:,}-byte upload limit")
    data = await file.read()
    if len(data) > limit:
        raise HTTPException(413, f"file is {len(data):,} bytes, over the {limit:,}-byte upload limit")
    try:
        img = open_image(data, state.settings.max_pixels)  # headers only
        if img.width * img.height <= INLINE_DECODE_PIXELS:
            image = finish_image(img)  # a thumbnail decodes faster than a thread hand-off
        else:
            image = await run_in_threadpool(finish_image, img)
    except ImageRejected as exc:
        raise HTTPException(exc.status, exc.reason) from None
    try:
        probs, loaded = await state.batcher.submit(image)
    except NoModelYet:
        raise waiting_error(state) from None
    top = torch.topk(probs, k=min(TOP_K, probs.numel()))
    predictions = [
        Prediction(class_id=int(c), label=state.labels[int(c)], probability=float(p))
        for p, c in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    return PredictResponse(predictions=predictions, model_round=loaded.round)
