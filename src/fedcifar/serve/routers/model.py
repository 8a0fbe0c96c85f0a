"""``GET /health`` and ``GET /api/model``: is a model served, and which one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fedcifar.serve.deps import ServeState, get_state

router = APIRouter(tags=["model"])


class ModelInfo(BaseModel):
    status: str  # "serving" or "waiting"
    source: str
    arch: str | None = None
    norm: str | None = None
    num_classes: int | None = None
    round: int | None = None
    test_acc: float | None = None
    path: str | None = None
    loaded_at: float | None = None
    reloads: int = 0
    inference: str
    max_batch: int
    mean_batch: float
    max_upload_bytes: int
    last_error: str | None = None


def model_info(state: ServeState) -> ModelInfo:
    current = state.store.current
    common = {
        "source": state.settings.source,
        "reloads": state.store.reloads,
        "inference": state.predictor.describe(),
        "max_batch": state.settings.max_batch,
        "mean_batch": round(state.batcher.mean_batch, 2),
        "max_upload_bytes": state.settings.max_upload_bytes,
        "last_error": state.store.last_error,
    }
    if current is None:
        return ModelInfo(status="waiting", **common)
    info = current.info
    return ModelInfo(
        status="serving",
        arch=info.get("arch"),
        norm=info.get("norm"),
        num_classes=current.num_classes,
        round=current.round,
        test_acc=info.get("test_acc"),
        path=str(current.path),
        loaded_at=current.loaded_at,
        **common,
    )


@router.get("/health", responses={503: {"description": "alive, but no model loaded yet"}})
def health(state: Annotated[ServeState, Depends(get_state)]) -> JSONResponse:
    """200 when a model is loaded and predictions can be answered; 503 while waiting for the first round."""
    current = state.store.current
    if current is None:
        return JSONResponse({"status": "waiting", "detail": state.store.waiting_for}, status_code=503)
    return JSONResponse({"status": "ok", "model_round": current.round})


@router.get("/api/model", response_model=ModelInfo)
def get_model(state: Annotated[ServeState, Depends(get_state)]) -> ModelInfo:
    """Architecture, round and test accuracy of the served weights (``status`` says if there are none yet)."""
    return model_info(state)
