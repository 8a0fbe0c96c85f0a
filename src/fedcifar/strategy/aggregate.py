"""Pure aggregation maths on state dicts (name -> tensor). Inputs are never mutated.

BatchNorm policy (the paper's): running_mean and running_var are floating-point buffers and
are averaged with the same factors as the parameters. Integer buffers such as
``num_batches_tracked`` are counters, not estimates: they are never averaged as floats; the
aggregate keeps the largest client value, in the original integer dtype.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import torch

from fedcifar.messages import Weights
from fedcifar.model.spec import is_statistic


def is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


class WeightedMean:
    """A running weighted mean of state dicts: folds one client at a time, keeps one sum."""

    def __init__(self) -> None:
        self._sum: Weights | None = None
        self._ints: Weights = {}
        self.total = 0.0
        self.count = 0

    def add(self, state: Mapping[str, torch.Tensor], factor: float) -> None:
        """Fold in ``state`` with aggregation factor ``factor`` (its share before normalisation)."""
        if factor < 0:
            raise ValueError(f"aggregation factor must be >= 0, got {factor}")
        if self._sum is None:
            self._sum = {k: v.detach().float() * factor for k, v in state.items() if is_float(v)}
            self._ints = {k: v.detach().clone() for k, v in state.items() if not is_float(v)}
        else:
            if set(state) != set(self._sum) | set(self._ints):
                raise ValueError("client state dicts have different keys")
            for k, acc in self._sum.items():
                acc.add_(state[k].detach().float(), alpha=factor)
            for k, acc in self._ints.items():
                torch.maximum(acc, state[k], out=acc)
        self.total += factor
        self.count += 1

    def result(self, like: Mapping[str, torch.Tensor] | None = None) -> Weights:
        """The mean, cast back to the dtypes of ``like`` (or float32) in the original key order."""
        if self._sum is None:
            raise ValueError("no client results to aggregate")
        if self.total <= 0:
            raise ValueError("aggregation factors sum to zero")
        out: Weights = {}
        keys = list(like) if like is not None else [*self._sum, *self._ints]
        for k in keys:
            if k in self._sum:
                dtype = like[k].dtype if like is not None else torch.float32
                out[k] = (self._sum[k] / self.total).to(dtype)
            else:
                out[k] = self._ints[k].clone()
        return out


def coordinate_median(stack: torch.Tensor) -> torch.Tensor:
    """Median over dim 0 of a (K, ...) stack; even K averages the two middle values."""
    ordered = stack.sort(dim=0).values
    k = stack.shape[0]
    if k % 2:
        return ordered[k // 2]
    return (ordered[k // 2 - 1] + ordered[k // 2]) / 2


def statistics_of(weights: Mapping[str, torch.Tensor]) -> Weights:
    """The BatchNorm running statistics of a state dict (a few KB: cheap to keep for every client)."""
    return {k: v.detach().clone() for k, v in weights.items() if is_statistic(k) and is_float(v)}


def median_statistics(stats: Sequence[Mapping[str, torch.Tensor]], like: Mapping[str, torch.Tensor]) -> Weights:
    """The coordinate-wise median of the clients' running statistics, in ``like``'s dtypes.

    How every robust rule, and ``clip_norm``, aggregates statistics: they are not measured by
    any distance or norm, so a client with honest parameters and a huge ``running_var`` would
    otherwise pass into the model unchecked. The median ignores fewer than half such clients.
    """
    if not stats:
        raise ValueError("no client results to aggregate")
    return {k: coordinate_median(torch.stack([s[k].float() for s in stats])).to(like[k].dtype) for k in stats[0]}


def weighted_mean(states: Iterable[Mapping[str, torch.Tensor]], factors: Iterable[float]) -> Weights:
    """sum_i p_i * state_i / sum_i p_i for float tensors; max for integer tensors."""
    acc = WeightedMean()
    first = None
    for state, p in zip(states, factors, strict=True):
        first = first or state
        acc.add(state, float(p))
    return acc.result(like=first)


def pseudo_gradient(
    global_weights: Mapping[str, torch.Tensor], mean: Mapping[str, torch.Tensor], local: Collection[str] = ()
) -> Weights:
    """Δ = mean - x over trained parameters only (Reddi et al. 2021 use this sign: x + ηΔ).

    Running statistics are left out on purpose: a server optimizer would move them by
    steps unrelated to the data (Adam could even make a variance negative), so they take
    the clients' mean directly in :func:`apply_update`. So are the ``local`` keys (FedBN's
    BatchNorm layers): no client trained them from x, so mean - x is no update of anything.
    """
    return {
        k: mean[k].float() - global_weights[k].float()
        for k in mean
        if is_float(mean[k]) and not is_statistic(k) and k not in local
    }


def apply_update(
    global_weights: Mapping[str, torch.Tensor], mean: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]
) -> Weights:
    """x + update for the keys in ``update``; every other entry (statistics, counters) from ``mean``."""
    out: Weights = {}
    for k, v in mean.items():
        out[k] = (global_weights[k].float() + update[k]).to(v.dtype) if k in update else v
    return out
