"""Optional extras of the local update, switched on by named ClientInstructions fields.

- FedProx (Li et al. 2020): ``proximal_mu`` adds μ(w - w_start) to each gradient, the
  gradient of (μ/2)||w - w_start||², before the optimizer step.
- SCAFFOLD (Karimireddy et al. 2020): ``control_server`` and ``control_client`` carry c and
  c_i (a missing name is zero). After each optimizer
  step, w -= lr·(c - c_i). With plain SGD this is exactly the paper's y -= lr·(g - c_i + c);
  with Adam the correction acts on the update rather than inside Adam's normalisation.
  At the end the client returns option II's c_i+ = c_i - c + (w_start - w)/(K·lr) in
  ``ClientResult.state["control"]``.

w_start is the weights the client started from: the global model, with FedBN's local
layers overlaid when those are in use.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedcifar.messages import Weights


class LocalHooks:
    """Built once per client update; each hook is a no-op when its feature is off."""

    def __init__(
        self,
        model: nn.Module,
        proximal_mu: float = 0.0,
        control_server: Mapping[str, torch.Tensor] | None = None,
        control_client: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.mu = proximal_mu
        self.scaffold = control_server is not None
        needs_start = proximal_mu > 0 or self.scaffold
        self.start = [p.detach().clone() for p in self.params] if needs_start else []
        self.correction: list[torch.Tensor] = []
        if control_server is not None:
            for name, p in named:
                c = control_server.get(name)
                ci = (control_client or {}).get(name)
                c = torch.zeros_like(p) if c is None else c.to(p.device, p.dtype)
                self.correction.append(c if ci is None else c - ci.to(p.device, p.dtype))

    @torch.no_grad()
    def after_backward(self) -> None:
        """FedProx: grad += μ (w - w_start)."""
        if self.mu > 0:
            pairs = [(p.grad, p, s) for p, s in zip(self.params, self.start, strict=True) if p.grad is not None]
            grads, params, start = (list(x) for x in zip(*pairs, strict=True))
            torch._foreach_add_(grads, torch._foreach_sub(params, start), alpha=self.mu)

    @torch.no_grad()
    def after_step(self, lr: float) -> None:
        """SCAFFOLD: w -= lr (c - c_i)."""
        if self.correction:
            torch._foreach_add_(self.params, self.correction, alpha=-lr)

    @torch.no_grad()
    def state(self, steps: int, lr: float) -> dict[str, Weights]:
        """Client state to keep: SCAFFOLD's c_i+ (option II), or nothing."""
        if not self.scaffold or steps == 0:
            return {}
        scale = 1.0 / (steps * lr)
        c_new = {
            name: (s - p.detach()) * scale - corr
            for name, p, s, corr in zip(self.names, self.params, self.start, self.correction, strict=True)
        }
        return {"control": c_new}


def overlay_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Replace some of the model's entries (FedBN's local layers) after the global load."""
    unexpected = getattr(model, "_orig_mod", model).load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"local weights name entries the model does not have: {unexpected[:3]}")
