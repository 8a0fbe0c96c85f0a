"""``GET /api/run`` and the partition figure: the data behind the live dashboard."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from fedcifar.serve.deps import ServeState, get_state
from fedcifar.serve.routers.model import model_info
from fedcifar.serve.run_status import PARTITION_FILE

router = APIRouter(prefix="/api/run", tags=["dashboard"])


def _no_run() -> HTTPException:
    return HTTPException(404, "this server serves a single model file (--model), not a run directory (--run)")


@router.get("")
def run_status(state: Annotated[ServeState, Depends(get_state)]) -> dict[str, Any]:
    """Round, progress of the running round (clients reported, or an estimate), curves from metrics.csv, model.

    ``trainer`` is the training process run beside the server (``--train-preset``), if any:
    its state (running, finished, failed, stopped), exit code and, if it failed, its last line.
    """
    if state.run is None:
        raise _no_run()
    status = state.run.status()
    status["run_dir"] = state.settings.run_name  # a name: clients never see the server's absolute paths
    status["model"] = model_info(state).model_dump()
    trainer = state.trainer.to_dict() if state.trainer is not None else None
    if trainer is not None and trainer["detail"]:
        trainer["detail"] = state.settings.public(trainer["detail"])
    status["trainer"] = trainer
    return status


@router.get("/partition.png", response_class=FileResponse)
def partition_png(state: Annotated[ServeState, Depends(get_state)]) -> FileResponse:
    """The run's partition figure (clients x classes)."""
    if state.run is None:
        raise _no_run()
    path = state.run.run_dir / PARTITION_FILE
    if not path.is_file():
        raise HTTPException(404, "no partition figure yet: training writes it before the first round")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})
