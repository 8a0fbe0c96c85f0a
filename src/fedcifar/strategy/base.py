"""The server side of a federated algorithm, as a small class with a few hooks.

The engine calls, each round: ``configure_fit`` (extra per-client instructions),
then ``aggregate_fit`` with an iterator of client results in a fixed order, which the
strategy folds as they arrive. State that must survive a resume goes through
``state_dict``/``load_state_dict`` as tensors plus a JSON-able dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedcifar.client.train import ClientResult

Weights = dict[str, torch.Tensor]


class Strategy:
    name = "base"

    def configure_fit(self, server_round: int, client_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Extra instructions per client; none by default."""
        return {}

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
    """Keep the metrics, drop the (large) weights once they are folded in."""
    return ClientResult(result.client_id, {}, result.num_examples, result.metrics)
