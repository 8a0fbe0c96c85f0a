"""Shared dependencies for the routers. Each reads what ``lifespan`` put on ``app.state``.

Tests override them with ``app.dependency_overrides`` where they need to.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from fedcifar.serve.predictor import MicroBatcher, ModelStore, Predictor
from fedcifar.serve.run_status import RunReader
from fedcifar.serve.settings import ServeSettings


@dataclass
class ServeState:
    """Everything the app holds between requests; built once in ``lifespan``."""

    settings: ServeSettings
    labels: tuple[str, ...]
    predictor: Predictor
    store: ModelStore
    batcher: MicroBatcher
    run: RunReader | None


def get_state(request: Request) -> ServeState:
    return request.app.state.serve
