"""FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization"): BatchNorm layers stay with each client. Selected by ``norm=fedbn``.

A wrapper around any strategy. It only tells every client to keep its own BatchNorm layers
(``local_bn``): a client that has trained before starts from the global weights with its own
BatchNorm layers (weight, bias, running statistics, counter) overlaid, a client new to
training from the global ones, and each keeps its trained layers for the next time (see
:mod:`fedcifar.client.hooks`). The server holds no client's layers. Everything else is the
wrapped strategy's business, told through ``FitRound.local_keys`` which entries are local: it
takes their plain aggregate and leaves them out of every server step (FedOpt's pseudo-gradient,
SCAFFOLD's and FedDyn's server state, FedExP's norms), since no client trained them from the
global values. The clients leave them out of their control variates and FedDyn and FedProx terms.

Evaluation policy. The global test set has no client, so FedBN's own evaluation (each
client on its own test split, with its own BN) has no counterpart here. What we evaluate,
export and serve is the global model whose BatchNorm layers are the wrapped strategy's
aggregate of the round's clients' local layers (for FedAvg: their size-weighted mean).
No client ever trains from those averaged layers once it has its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedcifar.messages import ClientResult, Weights
from fedcifar.model.spec import batchnorm_keys
from fedcifar.strategy.base import FitConfig, FitRound, SecureSum, Strategy, add_to_config
from fedcifar.strategy.population import Population


class FedBN(Strategy):
    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner.weighting)
        self.inner = inner

    def setup(self, population: Population) -> None:
        super().setup(population)
        self.inner.setup(population)

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        return add_to_config(self.inner.configure_fit(server_round, client_ids), client_ids, local_bn=True)

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        local = frozenset(batchnorm_keys(fit_round.global_weights))
        return self.inner.aggregate_fit(dataclasses.replace(fit_round, local_keys=local), results)

    @property
    def on_sum(self) -> bool:
        return self.inner.on_sum

    def aggregate_sum(self, fit_round: FitRound, secure: SecureSum) -> Weights:
        local = frozenset(batchnorm_keys(fit_round.global_weights))
        return self.inner.aggregate_sum(dataclasses.replace(fit_round, local_keys=local), secure)

    def stop_reason(self, server_round: int) -> str:
        return self.inner.stop_reason(server_round)

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        return self.inner.state_dict()

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(tensors, meta)
