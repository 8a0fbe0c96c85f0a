"""FedAvg (McMahan et al. 2017): the mean of client weights, weighted by client data size."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from fedcifar.client.train import ClientResult
from fedcifar.strategy.aggregate import WeightedMean
from fedcifar.strategy.base import Strategy, Weights, strip_weights


class FedAvg(Strategy):
    name = "fedavg"

    def aggregate_fit(
        self, server_round: int, global_weights: Mapping[str, torch.Tensor], results: Iterable[ClientResult]
    ) -> tuple[Weights, list[ClientResult]]:
        acc = WeightedMean()
        kept = []
        for res in results:
            acc.add(res.weights, self.weight(res))
            kept.append(strip_weights(res))
        return acc.result(like=global_weights), kept
