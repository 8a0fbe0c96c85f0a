"""SCAFFOLD (Karimireddy et al. 2020), option II control variates.

Server state: the global control variate c (one tensor per trained parameter) and, in a
:class:`ClientStore`, each client's c_i from the last round it trained (zero before). Each
round the server sends (c, c_i); the client corrects its steps by c - c_i and returns
c_i+ = c_i - c + (x - y_i)/(K·lr) (see :mod:`fedcifar.client.hooks`). The server then sets

    x <- x + η_g · mean_i(y_i - x)          (weighted by the client weighting)
    c <- c + (1/N) · sum_i (c_i+ - c_i)     (N = all clients, so c stays the mean of every c_i)

and stores c_i+. BatchNorm statistics take the clients' mean, as in FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedcifar.messages import ClientResult, Weights
from fedcifar.strategy.aggregate import WeightedMean, apply_update, pseudo_gradient
from fedcifar.strategy.base import FitConfig, FitRound, add_to_config
from fedcifar.strategy.fedavg import FedAvg
from fedcifar.strategy.store import ClientStore
from fedcifar.strategy.weighting import Weighting


class Scaffold(FedAvg):
    def __init__(self, num_clients: int, server_lr: float = 0.0, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        self.num_clients = num_clients
        self.server_lr = server_lr or 1.0
        self.c: Weights = {}  # empty = zero (before the first aggregation)
        self.store = ClientStore()

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        config = super().configure_fit(server_round, client_ids)
        for cid in client_ids:
            add_to_config(config, [cid], control_server=self.c, control_client=self.store.get(cid) or {})
        return config

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        global_weights = fit_round.global_weights
        acc = WeightedMean()
        dc_sum: Weights = {}
        for res in results:
            acc.add(res.weights, fit_round.factor(res))
            c_new = res.state.get("control")
            if c_new is None:
                raise ValueError(f"client {res.client_id} returned no SCAFFOLD control variate")
            c_old = self.store.get(res.client_id) or {}
            for k, t in c_new.items():
                dc = t.float() - c_old[k].to(t.device) if k in c_old else t.float()
                dc_sum[k] = dc if k not in dc_sum else dc_sum[k] + dc
            self.store.put(res.client_id, c_new)
        mean = acc.result(like=global_weights)
        update = {k: self.server_lr * d for k, d in pseudo_gradient(global_weights, mean).items()}
        self.c = {
            k: (self.c[k] + d / self.num_clients if k in self.c else d / self.num_clients) for k, d in dc_sum.items()
        }
        return apply_update(global_weights, mean, update)

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        tensors = {f"c.{k}": t for k, t in self.c.items()}
        tensors.update(self.store.state_dict("store."))
        return tensors, {"server_lr": self.server_lr, "clients_with_state": len(self.store)}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.c = {k.removeprefix("c."): t for k, t in tensors.items() if k.startswith("c.")}
        self.store.load_state_dict(tensors, "store.")
