"""The server side of a federated algorithm, as a small class with a few hooks.

The round loop (:mod:`fedcifar.server.loop`) calls ``setup`` once with what the server knows
about its clients, then, each round:

1. ``configure_fit(server_round, client_ids)``: extra per-client instructions, as
   :class:`~fedcifar.messages.ClientInstructions` keyword arguments;
2. ``aggregate_fit(fit_round, results)``: fold the results (an iterator, in one order on
   every backend: largest registered client first, whatever the arrival order) into new
   global weights. ``fit_round`` carries the round's global weights, each client's
   aggregation factor and the round's failures; what the strategy puts in its ``metrics``
   (FedExP's step size) becomes columns of the round's row in ``metrics.csv``.

Under secure aggregation the results never reach the server one by one: a strategy whose
``on_sum`` is true gets ``aggregate_sum(fit_round, SecureSum)`` instead (FedAvg's mean and the
server optimizers need nothing else); the others are refused at config time.

The loop, not the strategy, keeps the metrics of each result, counts failures and skips a
round with too few results: it then restores the strategy from the ``state_dict`` it took
before the round. So ``state_dict`` must hand out tensors that later rounds rebind rather
than modify in place. State that must survive a resume also goes through
``state_dict``/``load_state_dict``, as tensors plus a JSON-able dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedcifar.messages import ClientFailure, ClientResult, Weights
from fedcifar.strategy.population import Population
from fedcifar.strategy.weighting import Weighting

FitConfig = dict[int, dict[str, Any]]


@dataclass
class FitRound:
    """What a strategy knows when it aggregates a round."""

    server_round: int
    global_weights: Mapping[str, torch.Tensor]
    factors: Mapping[int, float] | None = None  # aggregation factor per client; None: num_examples
    failures: list[ClientFailure] = field(default_factory=list)  # complete once the results are consumed
    metrics: dict[str, float] = field(default_factory=dict)  # the strategy's own numbers, into the round's row
    local_keys: frozenset[str] = frozenset()  # entries each client keeps (FedBN's layers): no server step on them

    def factor(self, result: ClientResult) -> float:
        """How much ``result`` counts in the round's weighted mean (before normalisation)."""
        if self.factors is None:
            return float(result.num_examples)
        return self.factors[result.client_id]


@dataclass(frozen=True)
class SecureSum:
    """What secure aggregation hands a strategy instead of the results: the sum and the count.

    ``deltas`` is Σ_i f_i (w_i - w) over the float tensors, for the clients whose masked vectors
    are in the sum (f_i: each one's aggregation factor); ``weight`` is Σ_i f_i and ``count`` how
    many they are. No single client's update is in it.
    """

    deltas: Weights
    weight: float
    count: int
    results: tuple[ClientResult, ...] = ()  # the summed clients' metrics (sent in the clear), no weights

    def mean(self, global_weights: Mapping[str, torch.Tensor]) -> Weights:
        """w + Σ f_i Δ_i / Σ f_i: the weighted mean of the clients' weights; counters keep w's values."""
        if self.count == 0 or self.weight <= 0:
            raise ValueError("no client results to aggregate")
        out: Weights = {}
        for k, w in global_weights.items():
            out[k] = (w.float() + self.deltas[k].to(w.device) / self.weight).to(w.dtype) if k in self.deltas else w
        return out


class Strategy:
    on_sum = False  # aggregate_sum works: the strategy needs only the (weighted) sum of the updates

    def __init__(self, weighting: Weighting | None = None) -> None:
        self.weighting = weighting or Weighting()
        self.population: Population | None = None

    def setup(self, population: Population) -> None:
        """Called once before the first round (and again on resume)."""
        self.population = population

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        """Extra instructions per client; none by default."""
        return {}

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        """The new global weights from the results that arrived."""
        raise NotImplementedError

    def aggregate_sum(self, fit_round: FitRound, secure: SecureSum) -> Weights:
        """The new global weights from a secure sum (``on_sum`` strategies only)."""
        raise NotImplementedError(f"{type(self).__name__} needs each client's update, not their sum")

    def stop_reason(self, server_round: int) -> str:
        """Why the run must end before ``server_round`` (DP's spent budget), or "" to go on."""
        return ""

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        """(tensors, JSON-able metadata) needed to resume exactly."""
        return {}, {}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        return None


def add_to_config(config: FitConfig, client_ids: Iterable[int], **fields: Any) -> FitConfig:
    """``config`` with ``fields`` added to each listed client's instructions."""
    for cid in client_ids:
        config.setdefault(cid, {}).update(fields)
    return config
