"""Shared dependencies for the routers. Each reads what ``lifespan`` put on ``app.state``.

Tests override them with ``app.dependency_overrides`` where they need to.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from fedcifar.serve.decoder import DecodePool
from fedcifar.serve.predictor import MicroBatcher, ModelStore, Predictor
from fedcifar.serve.run_status import RunReader
from fedcifar.serve.settings import ServeSettings
from fedcifar.serve.trainer import TrainerStatus


@dataclass
class ServeState:
    """Everything the app holds between requests; built once in ``lifespan``."""

    settings: ServeSettings
    labels: tuple[str, ...]
    predictor: Predictor
    store: ModelStore
    batcher: MicroBatcher
    decoder: DecodePool
    run: RunReader | None
    trainer: TrainerStatus | None = None  # training beside the server (--train-preset), if any


async def get_state(request: Request) -> ServeState:
    """Async on purpose: a sync dependency would take a threadpool thread for every request."""
    return request.app.state.serve
