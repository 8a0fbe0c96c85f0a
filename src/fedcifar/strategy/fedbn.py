"""FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization"): BatchNorm layers stay with each client. Selected by ``norm=fedbn``.

A wrapper around any strategy. A client that has trained before starts from the global
weights with its own BatchNorm layers (weight, bias, running statistics, counter)
overlaid; a client new to training starts from the global ones. After training its
BatchNorm layers go back into a :class:`ClientStore`. Everything else is the wrapped
strategy's business; it still aggregates every entry, BatchNorm included.

Evaluation policy. The global test set has no client, so FedBN's own evaluation (each
client on its own test split, with its own BN) has no counterpart here. What we evaluate,
export and serve is the global model whose BatchNorm layers are the wrapped strategy's
aggregate of the round's clients' local layers (for FedAvg: their size-weighted mean).
No client ever trains from those averaged layers once it has its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from fedcifar.messages import ClientResult, Weights
from fedcifar.strategy.base import FitConfig, FitRound, Strategy, add_to_config
from fedcifar.strategy.population import Population
from fedcifar.strategy.store import ClientStore

PREFIX = "fedbn."


def batchnorm_keys(keys: Iterable[str]) -> list[str]:
    """The state-dict entries of BatchNorm layers: every module that has a running_mean."""
    keys = list(keys)
    modules = {k.removesuffix("running_mean") for k in keys if k.endswith(".running_mean")}
    return [k for k in keys if k[: k.rfind(".") + 1] in modules]


class FedBN(Strategy):
    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner.weighting)
        self.inner = inner
        self.store = ClientStore()
        self._keys: list[str] | None = None

    def setup(self, population: Population) -> None:
        super().setup(population)
        self.inner.setup(population)

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        config = self.inner.configure_fit(server_round, client_ids)
        for cid in client_ids:
            local = self.store.get(cid)
            if local is not None:
                add_to_config(config, [cid], local_weights=local)
        return config

    def _keep_local(self, results: Iterable[ClientResult]) -> Iterator[ClientResult]:
        for res in results:
            if self._keys is None:
                self._keys = batchnorm_keys(res.weights)
            self.store.put(res.client_id, {k: res.weights[k] for k in self._keys})
            yield res

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        return self.inner.aggregate_fit(fit_round, self._keep_local(results))

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        tensors, meta = self.inner.state_dict()
        assert not any(k.startswith(PREFIX) for k in tensors), "inner strategy uses the fedbn prefix"
        tensors = {**tensors, **self.store.state_dict(PREFIX)}
        return tensors, {**meta, "fedbn_clients": len(self.store)}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.inner.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(PREFIX)}, meta)
        self.store.load_state_dict(tensors, PREFIX)
