"""``GET /health`` and ``GET /api/model``: can predictions be answered, and by which model.

Both are ``async`` and read only in-memory state, so they answer on the event loop at once,
never waiting for a thread behind image decodes or inference.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fedcifar.serve.deps import ServeState, get_state

router = APIRouter(tags=["model"])


class ModelInfo(BaseModel):
    status: str  # "serving", "degraded" (loaded, but predictions fail) or "waiting"
    source: str  # "run NAME" or "model FILE": names, never absolute paths
    arch: str | None = None
    norm: str | None = None
    num_classes: int | None = None
    round: int | None = None
    test_acc: float | None = None
    file: str | None = None
    loaded_at: float | None = None
    reloads: int = 0
    inference: str
    max_batch: int
    mean_batch: float
    max_upload_bytes: int
    max_pixels: int
    last_error: str | None = None  # why the latest model file was not served, or why inference fails


def problem(state: ServeState) -> str | None:
    """Why predictions would fail right now with a model loaded, if they would."""
    if not state.batcher.running:
        return "the inference loop is not running"
    return state.store.failure


def model_info(state: ServeState) -> ModelInfo:
    current = state.store.current
    trouble = problem(state) if current is not None else None
    error = trouble or state.store.last_error
    common = {
        "source": state.settings.source,
        "reloads": state.store.reloads,
        "inference": state.predictor.describe(),
        "max_batch": state.settings.max_batch,
        "mean_batch": round(state.batcher.mean_batch, 2),
        "max_upload_bytes": state.settings.max_upload_bytes,
        "max_pixels": state.settings.max_pixels,
        "last_error": state.settings.public(error) if error else None,
    }
    if current is None:
        return ModelInfo(status="waiting", **common)
    info = current.info
    return ModelInfo(
        status="degraded" if trouble else "serving",
        arch=info.arch,
        norm=info.norm,
        num_classes=info.num_classes,
        round=info.round,
        test_acc=info.test_acc,
        file=current.path.name,
        loaded_at=current.loaded_at,
        **common,
    )


@router.get(
    "/health",
    responses={503: {"description": "alive, but predictions would fail: no model yet, or the model cannot answer"}},
)
async def health(state: Annotated[ServeState, Depends(get_state)]) -> JSONResponse:
    """200 only when a model is loaded and predictions can be answered; 503 with the reason otherwise."""
    current = state.store.current
    if current is None:
        return JSONResponse(
            {"status": "waiting", "detail": state.store.waiting_for}, status_code=503, headers={"Retry-After": "10"}
        )
    if (trouble := problem(state)) is not None:
        body = {"status": "degraded", "detail": state.settings.public(trouble), "model_round": current.round}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "model_round": current.round})


@router.get("/api/model", response_model=ModelInfo)
async def get_model(state: Annotated[ServeState, Depends(get_state)]) -> ModelInfo:
    """Architecture, round and test accuracy of the served weights (``status`` says if there are none yet)."""
    return model_info(state)
