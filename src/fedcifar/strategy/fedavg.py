"""FedAvg (McMahan et al. 2017): the mean of client weights, weighted by client data size."""

from __future__ import annotations

from collections.abc import Iterable

from fedcifar.messages import ClientResult, Weights
from fedcifar.strategy.aggregate import WeightedMean
from fedcifar.strategy.base import FitRound, Strategy


class FedAvg(Strategy):
    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        acc = WeightedMean()
        for res in results:
            acc.add(res.weights, fit_round.factor(res))
        return acc.result(like=fit_round.global_weights)
