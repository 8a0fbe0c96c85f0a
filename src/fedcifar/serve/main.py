"""The FastAPI app: built from settings, model and labels loaded once in ``lifespan``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedcifar.serve.decoder import DecodePool
from fedcifar.serve.deps import ServeState
from fedcifar.serve.labels import read_fine_labels
from fedcifar.serve.limits import BodySizeLimit
from fedcifar.serve.predictor import (
    LoadedModel,
    MicroBatcher,
    ModelStore,
    Predictor,
    inference_runtime,
    run_checked,
)
from fedcifar.serve.routers import dashboard, model, pages, predict
from fedcifar.serve.run_status import RunReader
from fedcifar.serve.settings import ServeSettings
from fedcifar.serve.trainer import TrainerStatus
from fedcifar.serve.watcher import ModelWatcher

log = logging.getLogger("fedcifar.serve")

MULTIPART_SLACK = 64 * 1024  # room for multipart boundaries and headers around the file


def _waiting_text(settings: ServeSettings) -> str:
    if settings.run_dir is not None:
        return f"no {settings.watched_model.name} in run {settings.run_name} yet"
    return f"no model at {settings.watched_model.name}"


def build_state(
    settings: ServeSettings, preloaded: LoadedModel | None = None, trainer: TrainerStatus | None = None
) -> tuple[ServeState, ModelWatcher]:
    """Labels, predictor, store, batcher, decoder and watcher; loads the model if ``--model`` was given."""
    labels = settings.labels if settings.labels is not None else read_fine_labels(settings.data_dir)
    predictor = Predictor(inference_runtime(settings.precision, settings.channels_last), num_labels=len(labels))
    store = ModelStore(waiting_for=_waiting_text(settings))
    watcher = ModelWatcher(store, predictor, settings.watched_model, settings.reload_interval)
    if preloaded is not None:
        store.swap(preloaded)
    elif settings.model_path is not None:
        store.swap(predictor.load(settings.model_path))  # --model must load: CheckpointError otherwise
    batcher = MicroBatcher(partial(run_checked, predictor, store), settings.max_batch, settings.batch_wait_ms)
    decoder = DecodePool(settings.decode_workers, settings.decode_queue)
    run = RunReader(settings.run_dir) if settings.run_dir is not None else None
    return ServeState(settings, labels, predictor, store, batcher, decoder, run, trainer), watcher


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state, watcher = build_state(app.state.settings, app.state.preloaded, app.state.trainer)
    app.state.preloaded = None
    if state.store.current is None:
        await asyncio.to_thread(watcher.check_once)
    await state.batcher.start()
    watch_task = asyncio.create_task(watcher.run(), name="fedcifar-model-watcher")
    app.state.serve = state
    current = state.store.current
    log.info(
        "fedcifar serve: %s; %s; inference %s",
        state.settings.source,
        f"serving round {current.round}" if current else "waiting for the first round",
        state.predictor.describe(),
    )
    try:
        yield
    finally:
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        await state.batcher.stop()
        state.decoder.shutdown()


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing" and loc:
            msg = f"missing form field '{loc}': send the image as multipart/form-data field 'file'"
            parts.append(msg)
        else:
            parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def create_app(
    settings: ServeSettings, preloaded: LoadedModel | None = None, trainer: TrainerStatus | None = None
) -> FastAPI:
    """The app; nothing is loaded until ``lifespan`` runs (uvicorn start, or ``with TestClient(app)``).

    ``trainer`` is the status of a training process run beside the server (``--train-preset``),
    shown by ``/api/run``.
    """
    app = FastAPI(
        title="fedcifar",
        summary="Top-5 CIFAR-100 predictions from the federated global model, and a live training dashboard.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.preloaded = preloaded
    app.state.trainer = trainer

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("fedcifar serve: unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)

    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_upload_bytes + MULTIPART_SLACK,
        reason=f"request body over the {settings.max_upload_bytes:,}-byte upload limit",
    )
    app.include_router(predict.router)
    app.include_router(model.router)
    app.include_router(dashboard.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(files("fedcifar.serve").joinpath("static"))), name="static")
    return app
