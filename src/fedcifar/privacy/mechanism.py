"""The maths of client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models") with adaptive clipping (Andrew et al. 2021, "Differentially Private
Learning with Adaptive Clipping"). Pure functions on state dicts; nothing here draws a seed.

One round, with m the *expected* number of clients (clients_per_round, or q·N under Poisson):

- each client's update Δ_k = w_k - w over every float tensor it sends is clipped to joint L2
  norm C: Δ̃_k = Δ_k · min(1, C / ||Δ_k||);
- the server releases Δ̄ = (Σ_k Δ̃_k + N(0, (z_Δ C)² I)) / m, a fixed denominator, so the
  sensitivity of the mean is C / m whoever took part (TFF's ``dp_aggregator`` does the same);
- adaptive clipping: each client also reports b_k = 1[||Δ_k|| <= C] - 1/2 (sensitivity 1/2),
  the server releases b̄ = (Σ b_k + N(0, σ_b²)) / m + 1/2 and moves C ← C · exp(-η (b̄ - γ)),
  towards the γ-quantile of the update norms. Releasing both is one Gaussian mechanism with
  noise multiplier z = (z_Δ⁻² + (2σ_b)⁻²)^(-1/2) (Andrew et al., Theorem 1), so z_Δ is set
  from the configured z and σ_b by :func:`update_noise_multiplier`.

Integer tensors (counters) never carry an update: a client sends the global value back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from fedcifar.messages import ClientInstructions, Weights
from fedcifar.privacy.noise import noise_source

Normal = Callable[..., torch.Tensor]  # (shape, device) -> standard normal noise


def update_of(global_weights: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> Weights:
    """Δ = w - w₀ over every float tensor (float32)."""
    return {
        k: w.detach().float() - global_weights[k].to(w.device).float()
        for k, w in weights.items()
        if w.is_floating_point()
    }


def joint_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of all tensors taken together, as one vector."""
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors.values()))


def clip_factor(norm: float, clip: float) -> float:
    """min(1, C / norm): what scales an update of ``norm`` into the ball of radius C."""
    return 1.0 if norm <= clip else clip / norm


def clipped(delta: Mapping[str, torch.Tensor], clip: float) -> tuple[Weights, float]:
    """(Δ · min(1, C/||Δ||), ||Δ||)."""
    norm = joint_norm(delta)
    scale = clip_factor(norm, clip)
    return {k: v * scale for k, v in delta.items()}, norm


def add_noise(tensors: Mapping[str, torch.Tensor], std: float, normal: Normal) -> Weights:
    """Each tensor plus independent N(0, std²) noise per coordinate."""
    if std <= 0:
        return dict(tensors)
    return {k: v + std * normal(v.shape, v.device) for k, v in tensors.items()}


def apply_delta(global_weights: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Weights:
    """w₀ + Δ for the float keys in ``delta`` (in the global's dtypes); every other entry is w₀'s."""
    return {
        k: (g.float() + delta[k].to(g.device)).to(g.dtype) if k in delta else g.clone()
        for k, g in global_weights.items()
    }


def update_noise_multiplier(z: float, count_std: float) -> float:
    """z_Δ such that the update (z_Δ) and the clipped count (σ_b) together spend z (Andrew et al.).

    With σ_b = 0 (fixed clipping) z_Δ = z. The count must take less than all of the budget:
    2σ_b > z, else no z_Δ exists.
    """
    if count_std <= 0:
        return z
    rest = z**-2 - (2 * count_std) ** -2
    if rest <= 0:
        raise ValueError(
            f"a clipped-count noise of {count_std:g} leaves nothing of noise multiplier {z:g} for the update"
        )
    return rest**-0.5


def below_clip(norm: float, clip: float) -> float:
    """b_k - 1/2: +1/2 if the update was within the clip, -1/2 if it was clipped."""
    return 0.5 if norm <= clip else -0.5


def next_clip(clip: float, unclipped_fraction: float, quantile: float, lr: float) -> float:
    """C · exp(-η (b̄ - γ)): geometric step towards the γ-quantile of the update norms."""
    return clip * math.exp(-lr * (unclipped_fraction - quantile))


def privatize_update(
    global_weights: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], instructions: ClientInstructions
) -> tuple[Weights, float]:
    """What a DP client sends: w₀ + clip(Δ) (+ its share of the noise), and its clipped-count report.

    Every float tensor is in Δ and so under the clip; integer tensors go back as w₀'s. The report
    is b_k - 1/2 (+ N(0, dp_count_std²) under client noise).
    """
    delta, norm = clipped(update_of(global_weights, weights), instructions.dp_clip)
    report = below_clip(norm, instructions.dp_clip)
    if instructions.dp_noise_std > 0 or instructions.dp_count_std > 0:
        normal = noise_source(instructions.dp_seed, instructions.seed)
        delta = add_noise(delta, instructions.dp_noise_std, normal)
        if instructions.dp_count_std > 0:
            report += instructions.dp_count_std * float(normal((1,))[0])
    return apply_delta(global_weights, delta), report
