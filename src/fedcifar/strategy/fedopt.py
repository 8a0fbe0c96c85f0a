"""Server optimizers on the pseudo-gradient: FedAvgM, FedAdam, FedYogi and FedAdagrad.

Each round the clients' weighted mean is computed as in FedAvg; the pseudo-gradient
Δ = mean - x (trained parameters only, see :func:`pseudo_gradient`) then drives a server
optimizer step. BatchNorm running statistics take the mean, counters the max.

- FedAvgM (Hsu et al. 2019): v = βv + Δ, x = x + ηv. With β = 0 and η = 1 it is FedAvg.
  Default η = 1, β = 0.9: Reddi et al. 2021's best server lr for FedAvgM on CIFAR-100
  (10^0) and Flower's default. (The earlier default η = 1 - β moved the first round a tenth
  of FedAvg's step and 12 rounds about 5.5 FedAvg steps: it lost to FedAvg for that alone.)
- FedAdam / FedYogi / FedAdagrad (Reddi et al. 2021, "Adaptive Federated Optimization",
  Algorithm 2): m = β1·m + (1-β1)Δ, then
  Adam v = β2·v + (1-β2)Δ², Yogi v = v - (1-β2)Δ²·sign(v - Δ²), Adagrad v = v + Δ²,
  and x = x + η·m / (sqrt(v) + τ), with v initialised to τ² and no bias correction, as in
  the paper (Flower's FedAdam adds Adam's bias correction to η; ours does not). Defaults:
  the paper's best on CIFAR-100 (google-research/federated, optimization/docs/
  hyperparameters.md): FedAdam and FedYogi η = 1, τ = 0.1; FedAdagrad η = 0.1, τ = 0.01.
  With τ well above a coordinate's |Δ| (here 1e-4 to 1e-2 a round) the first step is about
  η(1-β1)Δ/(2τ) = 0.5Δ at those values, and later ones up to ηΔ/τ: a FedAvg step or more,
  never the twentieth of one that η = τ = 1e-3 gave.

The steps are pure functions on tensors, tested against numpy; they are not torch
optimizers because Yogi has none and Reddi's τ sits outside the square root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fedcifar.messages import ClientResult, Weights
from fedcifar.strategy.aggregate import apply_update, pseudo_gradient
from fedcifar.strategy.base import FitRound
from fedcifar.strategy.fedavg import FedAvg
from fedcifar.strategy.weighting import Weighting

Tensor = torch.Tensor


def momentum_step(delta: Tensor, velocity: Tensor | None, lr: float, momentum: float) -> tuple[Tensor, Tensor]:
    """FedAvgM on one tensor: returns (update to add to x, new velocity)."""
    velocity = delta.clone() if velocity is None else momentum * velocity + delta
    return lr * velocity, velocity


def adaptive_step(
    rule: str,
    delta: Tensor,
    m: Tensor | None,
    v: Tensor | None,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One FedAdam/FedYogi/FedAdagrad step on one tensor: returns (update, m, v)."""
    m = (1 - beta1) * delta if m is None else beta1 * m + (1 - beta1) * delta
    v = torch.full_like(delta, tau * tau) if v is None else v
    sq = delta * delta
    if rule == "adam":
        v = beta2 * v + (1 - beta2) * sq
    elif rule == "yogi":
        v = v - (1 - beta2) * sq * torch.sign(v - sq)
    elif rule == "adagrad":
        v = v + sq
    else:
        raise ValueError(f"unknown adaptive rule {rule!r}")
    return lr * m / (v.sqrt() + tau), m, v


class FedOpt(FedAvg):
    """FedAvg's mean followed by ``server_step`` on the pseudo-gradient. Subclasses add state.

    Step sizes come in explicitly: their defaults live in one place, ``config.STRATEGY_DEFAULTS``.
    """

    slots: tuple[str, ...] = ()  # names of per-parameter state tensors, saved in checkpoints

    def __init__(self, server_lr: float, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        self.server_lr = server_lr
        self.state: dict[str, Weights] = {slot: {} for slot in self.slots}

    def server_step(self, delta: Weights) -> Weights:
        raise NotImplementedError

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        mean = super().aggregate_fit(fit_round, results)
        update = self.server_step(pseudo_gradient(fit_round.global_weights, mean, fit_round.local_keys))
        return apply_update(fit_round.global_weights, mean, update)

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        tensors = {f"{slot}.{k}": t for slot, d in self.state.items() for k, t in d.items()}
        return tensors, {"server_lr": self.server_lr}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        self.state = {slot: {} for slot in self.slots}
        for key, t in tensors.items():
            slot, _, name = key.partition(".")
            if slot in self.state:
                self.state[slot][name] = t


class FedAvgM(FedOpt):
    slots = ("velocity",)

    def __init__(self, server_lr: float, momentum: float, weighting: Weighting | None = None) -> None:
        super().__init__(server_lr, weighting)
        self.momentum = momentum

    def server_step(self, delta: Weights) -> Weights:
        old, velocity, update = self.state["velocity"], {}, {}
        for k, d in delta.items():
            update[k], velocity[k] = momentum_step(d, old.get(k), self.server_lr, self.momentum)
        self.state = {"velocity": velocity}
        return update


class FedAdaptive(FedOpt):
    """The three adaptive optimizers of Reddi et al. share everything but the v update."""

    rule = "adam"
    slots = ("m", "v")

    def __init__(
        self, server_lr: float, beta1: float, beta2: float, tau: float, weighting: Weighting | None = None
    ) -> None:
        super().__init__(server_lr, weighting)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def server_step(self, delta: Weights) -> Weights:
        old_m, old_v = self.state["m"], self.state["v"]
        m, v, update = {}, {}, {}
        for k, d in delta.items():
            update[k], m[k], v[k] = adaptive_step(
                self.rule, d, old_m.get(k), old_v.get(k), self.server_lr, self.beta1, self.beta2, self.tau
            )
        self.state = {"m": m, "v": v}
        return update


class FedAdam(FedAdaptive):
    rule = "adam"


class FedYogi(FedAdaptive):
    rule = "yogi"


class FedAdagrad(FedAdaptive):
    rule = "adagrad"
