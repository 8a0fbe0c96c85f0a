"""FedDyn (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization", Algorithm 1).

Each client k minimises L_k(w) - <g_k, w> + (α/2)||w - w_global||² and keeps g_k, its estimate
of ∇L_k at its last optimum (:mod:`fedcifar.client.hooks`; the server never sees it). The
server keeps h, one tensor per trained parameter, zero at the start, and each round

    h <- h - α · (1/m) · sum_{k in P} (w_k - w)          (m = all clients)
    w <- (1/|P|) · sum_{k in P} w_k - h / α

on trained parameters. The mean over the round's clients is unweighted, as in the paper (h's
update and the fixed-point argument assume it), so ``client_weighting`` does not apply; BatchNorm
statistics take the same unweighted mean, counters the max. Default α = 0.01: the official
code's value for CIFAR-100 (github.com/alpemreacar/FedDyn, ``alpha_coef``). The official code
also scales α per client by its size relative to the mean; the paper does not, nor do we.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedcifar.messages import ClientResult, Weights
from fedcifar.strategy.aggregate import WeightedMean, apply_update, pseudo_gradient
from fedcifar.strategy.base import FitConfig, FitRound, Strategy, add_to_config


def feddyn_server_step(
    h: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], alpha: float, participation: float
) -> tuple[Weights, Weights]:
    """One server step on the mean update Δ = mean_k(w_k) - w: returns (update to add to w, new h).

    ``participation`` is |P|/m, so that (1/m)·sum_k (w_k - w) = participation · Δ.
    """
    new_h = {k: (h[k] if k in h else torch.zeros_like(d)) - alpha * participation * d for k, d in delta.items()}
    return {k: d - new_h[k] / alpha for k, d in delta.items()}, new_h


class FedDyn(Strategy):
    def __init__(self, num_clients: int, alpha: float = 0.01) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"feddyn needs alpha > 0, got {alpha}")
        self.num_clients, self.alpha = num_clients, alpha
        self.h: Weights = {}  # empty = zero

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        return add_to_config(super().configure_fit(server_round, client_ids), client_ids, feddyn_alpha=self.alpha)

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        acc = WeightedMean()
        for res in results:
            acc.add(res.weights, 1.0)
        mean = acc.result(like=fit_round.global_weights)
        delta = pseudo_gradient(fit_round.global_weights, mean, fit_round.local_keys)
        update, self.h = feddyn_server_step(self.h, delta, self.alpha, acc.count / self.num_clients)
        return apply_update(fit_round.global_weights, mean, update)

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        return {f"h.{k}": t for k, t in self.h.items()}, {"alpha": self.alpha}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.h = {k.removeprefix("h."): t for k, t in tensors.items() if k.startswith("h.")}
