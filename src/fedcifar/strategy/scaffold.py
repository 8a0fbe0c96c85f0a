"""SCAFFOLD (Karimireddy et al. 2020), option II control variates.

Server state: the global control variate c (one tensor per trained parameter), nothing per
client. Each client keeps its own c_i (zero before it first trains; see
:mod:`fedcifar.client.hooks`), corrects its steps by c - c_i, stores
c_i+ = c_i - c + (x - y_i)/(K·lr) and sends back only Δc_i = c_i+ - c_i
(``ClientResult.extras["control_delta"]``). The server then sets

    x <- x + η_g · mean_i(y_i - x)          (weighted by the client weighting)
    c <- c + (1/N) · sum_i Δc_i             (N = all clients, so c stays the mean of every c_i)

BatchNorm statistics take the clients' mean, as in FedAvg. A client whose reply is lost after
it trained (a timeout, a skipped round) has moved its c_i without the server adding its Δc_i:
from then on c is no longer exactly the mean of the c_i, as with any dropped update.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedcifar.messages import CONTROL_DELTA, ClientResult, Weights
from fedcifar.strategy.aggregate import WeightedMean, apply_update, pseudo_gradient
from fedcifar.strategy.base import FitConfig, FitRound, add_to_config
from fedcifar.strategy.fedavg import FedAvg
from fedcifar.strategy.weighting import Weighting


class Scaffold(FedAvg):
    on_sum = False  # the server needs each client's control delta beside its weights

    def __init__(self, num_clients: int, server_lr: float, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        self.num_clients = num_clients
        self.server_lr = server_lr
        self.c: Weights = {}  # empty = zero (before the first aggregation)

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        config = super().configure_fit(server_round, client_ids)
        return add_to_config(config, client_ids, control_server=self.c)

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        global_weights = fit_round.global_weights
        acc = WeightedMean()
        dc_sum: Weights = {}
        for res in results:
            acc.add(res.weights, fit_round.factor(res))
            delta = res.extras.get(CONTROL_DELTA)
            if delta is None:
                raise ValueError(f"client {res.client_id} returned no SCAFFOLD control variate update")
            for k, dc in delta.items():
                dc = dc.float()
                dc_sum[k] = dc if k not in dc_sum else dc_sum[k] + dc
        mean = acc.result(like=global_weights)
        update = {k: self.server_lr * d for k, d in pseudo_gradient(global_weights, mean, fit_round.local_keys).items()}
        self.c = {
            k: (self.c[k] + d / self.num_clients if k in self.c else d / self.num_clients) for k, d in dc_sum.items()
        }
        return apply_update(global_weights, mean, update)

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        return {f"c.{k}": t for k, t in self.c.items()}, {"server_lr": self.server_lr}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.c = {k.removeprefix("c."): t for k, t in tensors.items() if k.startswith("c.")}
