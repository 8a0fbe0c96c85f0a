"""Injected faults and Byzantine attacks: what a broken or malicious client does to its update.

Both are switched on per client by the server's instructions (``fault``, ``attack``; see
:func:`fedcifar.federation.client_instructions`), and both act inside the client update, so
they behave the same on every backend.

Attacks (on the trained parameters, where BatchNorm statistics and counters stay honest, except
for ``bn_stats``):

- ``sign_flip``: send w₀ - s·Δ instead of w₀ + Δ (Δ = the honest update; default s = 4);
- ``scale``: send w₀ + s·Δ, a boosted update (default s = 10);
- ``gaussian``: send w₀ + ε, with ε ~ N(0, (s·rms Δ)²) per tensor: noise s times as large as
  an honest update, in no useful direction (default s = 10);
- ``label_flip``: train honestly on labels y -> C - 1 - y (data poisoning);
- ``bn_stats``: honest parameters, poisoned BatchNorm statistics: every running_var times s and
  every running_mean plus s (default s = 1e4; finite, so no check refuses them). No distance or
  norm over the parameters sees it; a mean of the statistics would wreck every eval-mode
  prediction.

Faults: ``raise`` raises :class:`InjectedFault`; ``nan`` returns NaN weights (the server must
reject them); ``hang`` blocks until the backend gives up on the client (its ``cancel`` event),
or :data:`HANG_LIMIT` seconds when nobody can cancel it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from fedcifar.messages import Weights
from fedcifar.model.spec import is_trained

DEFAULT_SCALE = {"sign_flip": 4.0, "scale": 10.0, "gaussian": 10.0, "label_flip": 0.0, "bn_stats": 1e4}
MODEL_ATTACKS = ("sign_flip", "scale", "gaussian", "bn_stats")
HANG_LIMIT = 3600.0


class InjectedFault(RuntimeError):
    """A failure injected on purpose (``fault_rate``), to exercise the server's failure path."""


def attack_strength(attack: str, scale: float) -> float:
    """The configured strength, or the attack's default when it is 0."""
    return scale or DEFAULT_SCALE.get(attack, 0.0)


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """y -> C - 1 - y: every label moved to another class, the same way on every client."""
    return num_classes - 1 - labels


def poison(
    global_weights: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    attack: str,
    scale: float,
    generator: torch.Generator,
) -> Weights:
    """The weights a malicious client sends instead of its honest ``weights``."""
    if attack not in MODEL_ATTACKS:
        raise ValueError(f"unknown model attack {attack!r}")
    s = attack_strength(attack, scale)
    if attack == "bn_stats":
        return {k: poison_statistic(k, w, s) for k, w in weights.items()}
    out: Weights = {}
    for key, w in weights.items():
        if not is_trained(key, w):
            out[key] = w
            continue
        w0 = global_weights[key].to(w.device, torch.float32)
        delta = w.float() - w0
        if attack == "sign_flip":
            delta = -s * delta
        elif attack == "scale":
            delta = s * delta
        else:
            rms = delta.square().mean().sqrt()
            noise = torch.randn(delta.shape, generator=generator, device=generator.device).to(delta.device)
            delta = s * rms * noise
        out[key] = (w0 + delta).to(w.dtype)
    return out


def poison_statistic(key: str, w: torch.Tensor, s: float) -> torch.Tensor:
    """``bn_stats`` on one entry: running_var * s, running_mean + s, anything else as it is."""
    if key.endswith("running_var"):
        return w * s
    if key.endswith("running_mean"):
        return w + s
    return w


def fail_before(fault: str, cancel: threading.Event | None) -> None:
    """Faults that strike before training: ``raise`` and ``hang``."""
    if fault == "raise":
        raise InjectedFault("injected fault (fault_kind=raise)")
    if fault == "hang":
        (cancel or threading.Event()).wait(HANG_LIMIT)
        raise InjectedFault("injected hang released (fault_kind=hang)")


def fail_after(fault: str, weights: Weights) -> Weights:
    """Faults that corrupt the result: ``nan`` fills every float entry with NaN."""
    if fault != "nan":
        return weights
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
