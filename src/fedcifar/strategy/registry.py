"""Strategies and client selectors, pluggable by name."""

from __future__ import annotations

from collections.abc import Callable

from fedcifar.strategy import selection
from fedcifar.strategy.base import Strategy
from fedcifar.strategy.fedavg import FedAvg

STRATEGIES: dict[str, Callable[..., Strategy]] = {"fedavg": lambda cfg: FedAvg()}
SELECTORS: dict[str, Callable[..., list[int]]] = {"uniform": selection.uniform}


def validate_names(cfg) -> None:
    from fedcifar.config import ConfigError

    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {cfg.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if cfg.client_selection not in SELECTORS:
        raise ConfigError(f"unknown client_selection {cfg.client_selection!r}; choose one of: {', '.join(SELECTORS)}")


def build_strategy(cfg) -> Strategy:
    return STRATEGIES[cfg.strategy](cfg)
