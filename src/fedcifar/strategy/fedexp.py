"""FedExP (Jhunjhunwala et al. 2023, "FedExP: Speeding Up Federated Averaging via
Extrapolation", Algorithm 1): FedAvg with a server step size chosen each round from the updates.

With the clients' updates Δ_i = w_i - w (trained parameters, as one vector) and their mean Δ̄,

    η_g = max(1, sum_i p_i ||Δ_i||² / (2 (||Δ̄||² + ε))),      w <- w + η_g Δ̄

where p_i are the round's normalised aggregation factors. With equal factors (the paper's
setting, ``client_weighting=uniform``) this is the paper's sum_i ||Δ_i||² / (2M(||Δ̄||² + ε)).
When the clients agree (Δ_i ≈ Δ̄) the ratio is about 1/2 and η_g = 1, FedAvg; when they pull in
different directions the mean is short and the step extrapolates. BatchNorm statistics take
the mean. Default ε = 1e-3, the paper's value for its CIFAR experiments. The paper evaluates
the average of the last two global models (the iterates oscillate); here the evaluated and
served model is the last one. Each round's η_g goes to ``metrics.csv`` as ``server_step``.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedcifar.messages import ClientResult, Weights
from fedcifar.strategy.aggregate import WeightedMean, apply_update, pseudo_gradient
from fedcifar.strategy.base import FitRound, Strategy
from fedcifar.strategy.weighting import Weighting


def fedexp_step_size(mean_sq_norm: float, update_sq_norm: float, epsilon: float) -> float:
    """η_g from sum_i p_i ||Δ_i||² (``mean_sq_norm``) and ||Δ̄||² (``update_sq_norm``)."""
    return max(1.0, mean_sq_norm / (2.0 * (update_sq_norm + epsilon)))


def squared_norm(delta: dict) -> float:
    return float(sum(d.double().square().sum() for d in delta.values()))


class FedExP(Strategy):
    def __init__(self, epsilon: float = 1e-3, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        if epsilon <= 0:
            raise ValueError(f"fedexp needs epsilon > 0, got {epsilon}")
        self.epsilon = epsilon

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        acc = WeightedMean()
        sq_sum = 0.0
        for res in results:
            factor = fit_round.factor(res)
            acc.add(res.weights, factor)
            sq_sum += factor * squared_norm(
                pseudo_gradient(fit_round.global_weights, res.weights, fit_round.local_keys)
            )
        mean = acc.result(like=fit_round.global_weights)
        delta = pseudo_gradient(fit_round.global_weights, mean, fit_round.local_keys)
        step = fedexp_step_size(sq_sum / acc.total, squared_norm(delta), self.epsilon)
        fit_round.metrics["server_step"] = step
        return apply_update(fit_round.global_weights, mean, {k: step * d for k, d in delta.items()})
