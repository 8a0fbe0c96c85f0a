"""The local objective: cross-entropy, optionally with FedLC's calibration and FedDecorr's term.

Both are client-side options that combine with any strategy (config keys ``fedlc_tau`` and
``feddecorr_beta``; 0 = off, the paper's plain cross-entropy):

- FedLC (Zhang et al. 2022, "Federated Learning with Label Distribution Skew via Logits
  Calibration"): the client subtracts τ·n_y^(-1/4) from the logit of each class y, n_y being
  how many images of y it holds, before the cross-entropy. Rare local classes lose less of
  their logit mass to the frequent ones. A class the client does not hold has n_y = 0, so its
  calibrated logit is -inf and it drops out of the softmax, as in the reference
  implementations (FL-bench, fluke). Evaluation and serving use the uncalibrated logits.
- FedDecorr (Shi et al. 2023, "Towards Understanding and Mitigating Dimensional Collapse in
  Heterogeneous Federated Learning", eq. 5): β·||K||_F²/d², where K = ZᵀZ/N is the correlation
  matrix of the batch's N penultimate features, each of the d dimensions standardised over the
  batch. It counters the dimensional collapse that label skew causes in local representations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

STANDARDISE_EPS = 1e-5  # added to each feature's batch variance before dividing by its root


def calibrated_logits(logits: torch.Tensor, label_counts: torch.Tensor, tau: float) -> torch.Tensor:
    """FedLC's z_y - τ·n_y^(-1/4) for every class y (n_y = 0 gives -inf)."""
    return logits - tau * label_counts.to(logits.dtype).pow(-0.25)


def decorrelation_loss(features: torch.Tensor) -> torch.Tensor:
    """FedDecorr's ||K||_F² / d² of an (N, d) batch of features (0 for a batch of one)."""
    n, d = features.shape
    if n < 2:
        return features.sum() * 0.0
    z = features.float()
    z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + STANDARDISE_EPS)
    k = z.T @ z / n
    return k.square().sum() / (d * d)


@dataclass(frozen=True)
class Objective:
    """The loss of one minibatch, given the logits, the labels and (for FedDecorr) the features."""

    fedlc_tau: float = 0.0
    label_counts: torch.Tensor | None = None  # the client's images per class, for FedLC
    feddecorr_beta: float = 0.0

    @property
    def needs_features(self) -> bool:
        return self.feddecorr_beta > 0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        logits = logits.float()
        if self.fedlc_tau > 0:
            if self.label_counts is None:
                raise ValueError("FedLC needs the client's label counts")
            logits = calibrated_logits(logits, self.label_counts, self.fedlc_tau)
        loss = F.cross_entropy(logits, labels)
        if self.feddecorr_beta > 0:
            if features is None:
                raise ValueError("FedDecorr needs the batch's features")
            loss = loss + self.feddecorr_beta * decorrelation_loss(features)
        return loss


class FeatureTap:
    """Captures the input of the model's ``fc`` layer (the penultimate features) on each forward.

    ``model`` is the plain module (both architectures end in ``fc``); a torch.compile wrapper
    shares its modules, so the hook sees the compiled forward too.
    """

    def __init__(self, model: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self._handle = model.fc.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.features = inputs[0]

    def close(self) -> None:
        self._handle.remove()
