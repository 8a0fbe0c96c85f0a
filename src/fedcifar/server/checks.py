"""What the server checks on every client result and every aggregate, whatever the strategy.

A result is refused (becomes a :class:`~fedcifar.messages.ClientFailure`) when its weights
have other keys, shapes or kinds than the global model's, any non-finite value, or when it
claims no examples. An aggregate with a non-finite value is refused too: the round is
skipped and the global model stays. ``clip_norm`` (Sun et al. 2019, "Can you really
backdoor federated learning?") bounds each accepted update's L2 norm, over the trained
parameters, before any aggregation rule sees it. BatchNorm statistics are not an update:
they are neither measured nor scaled (they would dominate the norm, 11-48 against 3-4 for the
parameters on paper-cpu, and make the bound meaningless). Under ``clip_norm`` the round loop
instead takes them as the coordinate-wise median of the round's clients, whatever the
strategy, so statistics that no norm bounds cannot be poisoned either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedcifar.messages import ClientResult, Weights
from fedcifar.model.spec import is_trained

Tensor = torch.Tensor


def _names(keys: set[str], limit: int = 3) -> str:
    shown = sorted(keys)[:limit]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def non_finite(weights: Mapping[str, Tensor]) -> str | None:
    """The first float entry holding a NaN or an infinity, or None."""
    for key, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return key
    return None


def result_problem(result: ClientResult, like: Mapping[str, Tensor]) -> str | None:
    """Why ``result`` cannot be aggregated into a model shaped like ``like`` (one line), or None."""
    got, want = set(result.weights), set(like)
    if got != want:
        missing, extra = want - got, got - want
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unexpected {_names(extra)}"] if extra else [])
        return f"weights do not match the model ({'; '.join(parts)})"
    for key, ref in like.items():
        t = result.weights[key]
        if t.shape != ref.shape:
            return f"weights {key!r} have shape {tuple(t.shape)}, the model's is {tuple(ref.shape)}"
        if t.is_floating_point() != ref.is_floating_point():
            return f"weights {key!r} have dtype {t.dtype}, the model's is {ref.dtype}"
    bad = non_finite(result.weights)
    if bad is not None:
        return f"non-finite weights in {bad!r}"
    if not result.num_examples > 0:
        return f"reported {result.num_examples} training examples"
    return None


def update_norm(global_weights: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> float:
    """||w - w₀||₂ over the trained parameters (BatchNorm statistics left out)."""
    total = 0.0
    for key, w in weights.items():
        if is_trained(key, w):
            total += float((w.float() - global_weights[key].to(w.device).float()).square().sum())
    return math.sqrt(total)


def clip_update(global_weights: Mapping[str, Tensor], weights: Weights, max_norm: float, norm: float) -> Weights:
    """w₀ + Δ · min(1, max_norm / ||Δ||) for the trained parameters; statistics pass as sent."""
    if norm <= max_norm:
        return weights
    scale = max_norm / norm
    out: Weights = {}
    for key, w in weights.items():
        if is_trained(key, w):
            w0 = global_weights[key].to(w.device).float()
            out[key] = (w0 + (w.float() - w0) * scale).to(w.dtype)
        else:
            out[key] = w
    return out
