"""What a server and a client exchange in a round: plain records, no behaviour.

Strategies, backends and the client update all import these and nothing of each other.
Every field is a name, a number, a string or a state dict (``Weights``), so a network codec
(a Flower ``RecordDict``, say) can carry any of them without knowing an algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Weights = dict[str, torch.Tensor]
"""A state dict: parameter or buffer name -> tensor. Scalar aggregation factors are not weights."""


@dataclass(frozen=True)
class ClientInstructions:
    """What the server asks of one client for one round."""

    seed: int  # drives the client's shuffling and augmentation
    epochs: int = 2
    steps: int = 0  # > 0: stop after this many minibatches instead of running full epochs
    batch_size: int = 64
    lr: float = 1e-3
    augment: bool = True
    optimizer: str = "adam"  # or "sgd" (plain)
    # Extras for other algorithms (client/hooks.py); the defaults leave plain FedAvg training.
    proximal_mu: float = 0.0  # FedProx
    control_server: Weights | None = None  # SCAFFOLD's c; None: SCAFFOLD is off
    control_client: Weights | None = None  # SCAFFOLD's c_i (missing names are zero)
    local_weights: Weights | None = None  # entries that replace the global ones (FedBN)
    # Robustness studies (client/adversary.py): an injected fault, or this client's attack.
    fault: str = ""  # "", "raise", "nan" or "hang"
    attack: str = "none"  # "none", "sign_flip", "scale", "gaussian" or "label_flip"
    attack_scale: float = 0.0  # 0 = the attack's default strength


@dataclass
class ClientResult:
    """One client's reply to a fit instruction."""

    client_id: int
    weights: Weights  # the trained state dict; the round loop drops it once it is folded in
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, Weights] = field(default_factory=dict)  # client state to keep, e.g. "control"

    def without_weights(self) -> ClientResult:
        """The metrics alone, for the round's record (weights and state are large)."""
        return ClientResult(self.client_id, {}, self.num_examples, self.metrics)


@dataclass(frozen=True)
class ClientFailure:
    """A client that did not deliver a usable result this round, and why (one line)."""

    client_id: int
    reason: str
