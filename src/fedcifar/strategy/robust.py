"""Robust aggregation: coordinate-wise median and trimmed mean, Krum and Multi-Krum, Bulyan
and the geometric median.

- median (Yin et al. 2018): per coordinate, the median of the clients' values (the mean of
  the two middle ones for an even count, as numpy does).
- trimmed_mean (Yin et al. 2018): per coordinate, drop the floor(β·K) largest and smallest
  values and average the rest.
- krum / multikrum (Blanchard et al. 2017): score each client by the summed squared
  distance to its K - f - 2 nearest others (at least 1, as Flower does), keep the m clients
  with the lowest scores (m = 1 for Krum) and take their plain mean (the paper's Multi-Krum
  averages the selected updates unweighted: a weight that a client reports itself would let
  it dominate the mean of the selected).
- bulyan (El Mhamdi et al. 2018): pick θ = K - 2f clients by Krum, one at a time, each time
  among those not yet picked; then, per coordinate, average the β = θ - 2f picked values
  closest to their median. It needs K >= 4f + 3; a round with fewer results assumes the
  largest f it can, (K - 3) // 4.
- geometric_median (RFA, Pillutla et al. 2022): the point z minimising Σ α_i ||z - w_i|| over
  the clients' trained parameters taken as one vector, by the smoothed Weiszfeld algorithm:
  z <- Σ β_i w_i / Σ β_i with β_i = α_i / max(ν, ||z - w_i||), from the weighted mean, until
  the objective changes by less than a relative 1e-6 or ``iters`` steps are done.

Distances (Krum, Bulyan, the geometric median) are measured over the trained parameters only:
BatchNorm statistics of non-IID clients differ several times more than their parameter
updates, and over every float entry would make an attacker look like anyone else. Every rule
then takes the statistics as the coordinate-wise median over all the round's clients
(:func:`~fedcifar.strategy.aggregate.median_statistics`), so a client that sends honest
parameters with poisoned statistics (``attack=bn_stats``) can be chosen without harm.
Median, trimmed mean, Krum's mean and Bulyan ignore the aggregation factors.
Integer counters take the max, as everywhere. Unlike FedAvg these rules need every client
of the round at once, so they hold the round's K state dicts in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from fedcifar.messages import ClientResult, Weights
from fedcifar.model.spec import is_trained
from fedcifar.strategy.aggregate import coordinate_median, is_float, median_statistics, statistics_of, weighted_mean
from fedcifar.strategy.base import FitRound, Strategy
from fedcifar.strategy.weighting import Weighting

Tensor = torch.Tensor


def trimmed_mean(stack: Tensor, ratio: float) -> Tensor:
    """Mean over dim 0 after dropping floor(ratio·K) values at each end, per coordinate."""
    k = stack.shape[0]
    cut = int(ratio * k)
    return stack.sort(dim=0).values[cut : k - cut].mean(dim=0)


def pairwise_sq_distances(states: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """(K, K) float64 squared Euclidean distances between clients over the trained parameters."""
    k = len(states)
    dist = torch.zeros(k, k, dtype=torch.float64)
    for key, first in states[0].items():
        if not is_trained(key, first):
            continue
        x = torch.stack([s[key].reshape(-1) for s in states]).double()
        gram = x @ x.T
        norms = gram.diagonal()
        dist += (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0).cpu()
    return dist


def krum_scores(sq_dist: Tensor, byzantine: int) -> Tensor:
    """Krum score per client: the sum of its K - f - 2 smallest distances to the others."""
    k = sq_dist.shape[0]
    closest = min(max(1, k - byzantine - 2), k - 1)
    others = sq_dist + torch.diag(torch.full((k,), float("inf"), dtype=sq_dist.dtype))
    return others.sort(dim=1).values[:, :closest].sum(dim=1)


def krum_select(sq_dist: Tensor, byzantine: int, keep: int) -> list[int]:
    """Indices of the ``keep`` clients with the lowest Krum scores (ties: lower index first)."""
    scores = krum_scores(sq_dist, byzantine)
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:keep])


def coordinatewise(
    states: Sequence[Mapping[str, Tensor]], like: Mapping[str, Tensor], rule: Callable[[Tensor], Tensor]
) -> Weights:
    """Apply ``rule`` to each float entry's (K, ...) stack; integer entries take the max."""
    out: Weights = {}
    for key, ref in like.items():
        stack = torch.stack([s[key] for s in states])
        out[key] = rule(stack.float()).to(ref.dtype) if is_float(ref) else stack.max(dim=0).values
    return out


class RobustAggregate(Strategy):
    """Collect the round's client state dicts, then combine them with a robust rule."""

    def combine(self, fit_round: FitRound, states: list[Weights], factors: list[float]) -> Weights:
        """Every entry of the aggregate; the statistics are then replaced by the clients' median."""
        raise NotImplementedError

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        states, factors = [], []
        for res in results:
            states.append(res.weights)
            factors.append(fit_round.factor(res))
        if not states:
            raise ValueError("no client results to aggregate")
        out = self.combine(fit_round, states, factors)
        return {**out, **median_statistics([statistics_of(s) for s in states], fit_round.global_weights)}


class Median(RobustAggregate):
    def combine(self, fit_round, states, factors):
        return coordinatewise(states, fit_round.global_weights, coordinate_median)


class TrimmedMean(RobustAggregate):
    def __init__(self, trim_ratio: float = 0.1, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        self.trim_ratio = trim_ratio

    def combine(self, fit_round, states, factors):
        return coordinatewise(states, fit_round.global_weights, lambda s: trimmed_mean(s, self.trim_ratio))


class Krum(RobustAggregate):
    """Multi-Krum; ``keep=1`` is Krum."""

    def __init__(self, byzantine: int = 0, keep: int = 1, weighting: Weighting | None = None):
        super().__init__(weighting)
        self.byzantine, self.keep = byzantine, keep

    def combine(self, fit_round, states, factors):
        chosen = krum_select(pairwise_sq_distances(states), self.byzantine, min(self.keep, len(states)))
        return weighted_mean([states[i] for i in chosen], [1.0] * len(chosen))

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        return {}, {"byzantine": self.byzantine, "keep": self.keep}


def bulyan_select(sq_dist: Tensor, byzantine: int) -> list[int]:
    """Bulyan's θ = K - 2f clients: Krum's choice, repeated on the clients not yet chosen."""
    remaining = list(range(sq_dist.shape[0]))
    chosen: list[int] = []
    while len(chosen) < sq_dist.shape[0] - 2 * byzantine:
        sub = sq_dist[remaining][:, remaining]
        chosen.append(remaining.pop(krum_select(sub, byzantine, 1)[0]))
    return sorted(chosen)


def closest_to_median_mean(stack: Tensor, keep: int) -> Tensor:
    """Per coordinate, the mean of the ``keep`` values of a (K, ...) stack closest to their median."""
    distance = (stack - coordinate_median(stack)).abs()
    nearest = distance.argsort(dim=0, stable=True)[:keep]
    return stack.gather(0, nearest).mean(dim=0)


def convex_combination(stacks: Mapping[str, Tensor], beta: Tensor) -> dict[str, Tensor]:
    """Σ β_i x_i / Σ β_i for each entry's (K, ...) stack."""
    b = (beta / beta.sum()).to(torch.float32)
    return {k: torch.tensordot(b, x, dims=1) for k, x in stacks.items()}


def weiszfeld_weights(
    stacks: Mapping[str, Tensor], alphas: Tensor, iters: int, nu: float = 1e-6, ftol: float = 1e-6
) -> Tensor:
    """Smoothed Weiszfeld on points given as per-entry (K, ...) float stacks.

    Returns the weights β (summing to 1) whose convex combination of the points is their
    geometric median.
    """
    alphas = alphas.double() / alphas.double().sum()

    def distances(z: Mapping[str, Tensor]) -> Tensor:
        sq = sum((x - z[k]).reshape(x.shape[0], -1).double().square().sum(dim=1) for k, x in stacks.items())
        return sq.sqrt()

    beta = alphas
    dist = distances(convex_combination(stacks, beta))
    objective = float((alphas * dist).sum())
    for _ in range(iters):
        beta = alphas / dist.clamp_min(nu)
        dist = distances(convex_combination(stacks, beta))
        previous, objective = objective, float((alphas * dist).sum())
        if abs(previous - objective) <= ftol * objective:
            break
    return beta / beta.sum()


class Bulyan(RobustAggregate):
    def __init__(self, byzantine: int = 0, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        self.byzantine = byzantine

    def combine(self, fit_round, states, factors):
        f = min(self.byzantine, max(len(states) - 3, 0) // 4)
        fit_round.metrics["bulyan_f"] = float(f)  # lower than krum_byzantine when the round came up short
        chosen = bulyan_select(pairwise_sq_distances(states), f)
        keep = len(chosen) - 2 * f
        return coordinatewise(
            [states[i] for i in chosen], fit_round.global_weights, lambda s: closest_to_median_mean(s, keep)
        )

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        return {}, {"byzantine": self.byzantine}


class GeometricMedian(RobustAggregate):
    def __init__(self, iters: int = 10, weighting: Weighting | None = None) -> None:
        super().__init__(weighting)
        self.iters = iters

    def combine(self, fit_round, states, factors):
        global_weights = fit_round.global_weights
        floats = [k for k, v in global_weights.items() if is_float(v)]
        stacks = {k: torch.stack([s[k] for s in states]).float() for k in floats}
        trained = {k: x for k, x in stacks.items() if is_trained(k, x)}
        median = convex_combination(stacks, weiszfeld_weights(trained, torch.tensor(factors), self.iters))
        out: Weights = {}
        for key, ref in global_weights.items():
            if key in median:
                out[key] = median[key].to(ref.dtype)
            else:
                out[key] = torch.stack([s[key] for s in states]).max(dim=0).values
        return out
