"""FedAvg (McMahan et al. 2017): the mean of client weights, weighted by client data size."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fedcifar.messages import ClientResult, Weights
from fedcifar.strategy.aggregate import WeightedMean
from fedcifar.strategy.base import FitRound, SecureSum, Strategy


class FedAvg(Strategy):
    on_sum = True  # so do its subclasses that only reshape the mean (FedProx, FedOpt)

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        acc = WeightedMean()
        for res in results:
            acc.add(res.weights, fit_round.factor(res))
        return acc.result(like=fit_round.global_weights)

    def aggregate_sum(self, fit_round: FitRound, secure: SecureSum) -> Weights:
        """The secure sum's weighted mean, folded as the round's one result (FedOpt then steps from it)."""
        mean = secure.mean(fit_round.global_weights)
        return self.aggregate_fit(dataclasses.replace(fit_round, factors=None), [ClientResult(-1, mean, 1)])
