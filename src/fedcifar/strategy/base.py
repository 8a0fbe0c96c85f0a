"""The server side of a federated algorithm, as a small class with a few hooks.

The engine calls ``setup`` once with what the server knows about its clients, then, each
round: ``configure_fit`` (extra per-client instructions, as ClientInstructions keyword
arguments), then ``aggregate_fit`` with an iterator of client results in a fixed order,
which the strategy folds as they arrive. State that must survive a resume goes through
``state_dict``/``load_state_dict`` as tensors plus a JSON-able dict.

Subclasses that override ``configure_fit`` call ``super().configure_fit`` first: it fixes
the round's aggregation weights (see :mod:`fedcifar.strategy.weighting`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedcifar.client.train import ClientResult
from fedcifar.strategy.population import Population
from fedcifar.strategy.weighting import Weighting

Weights = dict[str, torch.Tensor]
FitConfig = dict[int, dict[str, Any]]


class Strategy:
    name = "base"

    def __init__(self, weighting: Weighting | None = None) -> None:
        self.weighting = weighting or Weighting()
        self.population: Population | None = None
        self._round_weights: dict[int, float] | None = None

    def setup(self, population: Population) -> None:
        """Called once before the first round (and again on resume)."""
        self.population = population

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        """Extra instructions per client; none by default."""
        self._round_weights = self.weighting.for_round(client_ids, self.population)
        return {}

    def weight(self, result: ClientResult) -> float:
        """The aggregation weight of one client's result this round."""
        if self._round_weights is None:
            return float(result.num_examples)
        return self._round_weights[result.client_id]

    def aggregate_fit(
        self, server_round: int, global_weights: Mapping[str, torch.Tensor], results: Iterable[ClientResult]
    ) -> tuple[Weights, list[ClientResult]]:
        """Return the new global weights and the results (with weights dropped) for metrics."""
        raise NotImplementedError

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        """(tensors, JSON-able metadata) needed to resume exactly."""
        return {}, {}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        return None


def strip_weights(result: ClientResult) -> ClientResult:
    """Keep the metrics, drop the (large) weights and client state once they are folded in."""
    return ClientResult(result.client_id, {}, result.num_examples, result.metrics)


def add_to_config(config: FitConfig, client_ids: Iterable[int], **fields: Any) -> FitConfig:
    """``config`` with ``fields`` added to each listed client's instructions."""
    for cid in client_ids:
        config.setdefault(cid, {}).update(fields)
    return config
