"""Optional extras of the local update, switched on by named ClientInstructions fields.

- FedProx (Li et al. 2020): ``proximal_mu`` adds μ(w - w_start) to each gradient, the
  gradient of (μ/2)||w - w_start||², before the optimizer step.
- SCAFFOLD (Karimireddy et al. 2020): ``control_server`` carries c; c_i is the client's own,
  ``state["control"]`` (a missing name is zero, so a client new to training starts at 0).
  After each optimizer step, w -= lr·(c - c_i). With plain SGD this is exactly the paper's
  y -= lr·(g - c_i + c); with Adam the correction acts on the update rather than inside
  Adam's normalisation. At the end the client keeps option II's
  c_i+ = c_i - c + (w_start - w)/(K·lr) as its new ``state["control"]`` and sends the server
  only Δc_i = c_i+ - c_i (``ClientResult.extras["control_delta"]``), all the server needs.
- FedDyn (Acar et al. 2021, Algorithm 1): ``feddyn_alpha`` α makes the local objective
  L_k(w) - <g_k, w> + (α/2)||w - w_start||², where g_k (``state["feddyn_grad"]``, zero before
  the client first trains) is the client's running estimate of ∇L_k at its last local optimum.
  So each gradient gets α(w - w_start) - g_k, and at the end the client keeps
  g_k+ = g_k - α(w - w_start) (the paper's first-order condition). g_k never leaves the client.
- FedBN (Li et al. 2021): with ``local_bn`` the client overlays its own BatchNorm layers
  (``state["local"]``, from the last round it trained) on the global weights, and keeps the
  trained ones. A client new to training starts from the global layers.

w_start is the weights the client started from: the global model, with FedBN's local
layers overlaid when those are in use. No hook acts on the local layers (``local``, the
parameters of FedBN's BatchNorm layers): they are the client's own, never trained from global
values, so they get no proximal pull, no control variate and no FedDyn term.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from fedcifar.messages import CONTROL, CONTROL_DELTA, DYN_GRAD, LOCAL, ClientState, Weights
from fedcifar.model.spec import batchnorm_keys


def _per_param(named: list[tuple[str, torch.Tensor]], given: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """``given``'s tensor for each named parameter, on its device and dtype (a missing name is zero)."""
    return [torch.zeros_like(p) if n not in given else given[n].to(p.device, p.dtype) for n, p in named]


class LocalHooks:
    """Built once per client update; each hook is a no-op when its feature is off.

    ``model`` must be the plain module (``unwrap`` a compiled one), so the parameter names the
    client state is keyed by are the same with and without ``torch.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        proximal_mu: float = 0.0,
        control_server: Mapping[str, torch.Tensor] | None = None,
        control_client: Mapping[str, torch.Tensor] | None = None,
        feddyn_alpha: float = 0.0,
        feddyn_grad: Mapping[str, torch.Tensor] | None = None,
        local: Iterable[str] = (),
    ) -> None:
        if hasattr(model, "_orig_mod"):
            raise TypeError("LocalHooks needs the plain module, not a torch.compile wrapper (unwrap it)")
        local = set(local)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n not in local]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.mu = proximal_mu
        self.alpha = feddyn_alpha
        self.dyn_grad = _per_param(named, feddyn_grad or {}) if feddyn_alpha > 0 else []
        self.scaffold = control_server is not None
        self.control_client = dict(control_client or {})
        needs_start = proximal_mu > 0 or self.scaffold or feddyn_alpha > 0
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
        """FedProx: grad += μ (w - w_start). FedDyn: grad += α (w - w_start) - g_k."""
        weight = self.mu + self.alpha
        if weight > 0:
            idx = [i for i, p in enumerate(self.params) if p.grad is not None]
            grads = [self.params[i].grad for i in idx]
            drift = torch._foreach_sub([self.params[i] for i in idx], [self.start[i] for i in idx])
            torch._foreach_add_(grads, drift, alpha=weight)
            if self.alpha > 0:
                torch._foreach_sub_(grads, [self.dyn_grad[i] for i in idx])

    @torch.no_grad()
    def after_step(self, lr: float) -> None:
        """SCAFFOLD: w -= lr (c - c_i)."""
        if self.correction:
            torch._foreach_add_(self.params, self.correction, alpha=-lr)

    @torch.no_grad()
    def dyn_grad_update(self) -> Weights | None:
        """FedDyn's g_k+ = g_k - α (w - w_start), by parameter name; None when off."""
        if self.alpha <= 0:
            return None
        return {
            name: g - self.alpha * (p.detach() - s)
            for name, p, s, g in zip(self.names, self.params, self.start, self.dyn_grad, strict=True)
        }

    @torch.no_grad()
    def control_update(self, steps: int, lr: float) -> tuple[Weights, Weights] | None:
        """SCAFFOLD's (c_i+, Δc_i = c_i+ - c_i) after ``steps`` steps (option II); None when off or idle."""
        if not self.scaffold or steps == 0:
            return None
        scale = 1.0 / (steps * lr)
        c_new = {
            name: (s - p.detach()) * scale - corr
            for name, p, s, corr in zip(self.names, self.params, self.start, self.correction, strict=True)
        }
        old = self.control_client
        delta = {k: t - old[k].to(t.device) if k in old else t for k, t in c_new.items()}
        return c_new, delta


def next_state(
    state: ClientState, hooks: LocalHooks, weights: Weights, local_bn: bool, steps: int, lr: float
) -> tuple[ClientState, dict[str, Weights]]:
    """The client's state after its update, and the extras it sends the server.

    Entries the update did not touch are carried over, so a client that trained no step keeps its c_i.
    """
    new = dict(state)
    extras: dict[str, Weights] = {}
    control = hooks.control_update(steps, lr)
    if control is not None:
        new[CONTROL], extras[CONTROL_DELTA] = control
    dyn_grad = hooks.dyn_grad_update()
    if dyn_grad is not None:
        new[DYN_GRAD] = dyn_grad
    if local_bn:
        new[LOCAL] = {k: weights[k].clone() for k in batchnorm_keys(weights)}  # weights may be altered later
    return new, extras


def overlay_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Replace some of the model's entries (FedBN's local layers) after the global load."""
    unexpected = getattr(model, "_orig_mod", model).load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"local weights name entries the model does not have: {unexpected[:3]}")
