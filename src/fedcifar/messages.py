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

ClientState = dict[str, Weights]
"""What a client keeps between the rounds it trains, by name: SCAFFOLD's ``"control"`` (c_i),
FedDyn's ``"feddyn_grad"`` (g_k), FedBN's ``"local"`` (its BatchNorm layers), record-level DP's
``"dp_ledger"`` (the DP-SGD steps it has spent). It lives with the client (the simulator's store, a
SuperNode's ``context.state``); the server never holds it."""

CONTROL, DYN_GRAD, LOCAL = "control", "feddyn_grad", "local"  # the ClientState entries of SCAFFOLD, FedDyn, FedBN
DP_LEDGER = "dp_ledger"  # the ClientState entry of record-level DP: the client's own privacy ledger
CONTROL_DELTA = "control_delta"  # the ClientResult.extras entry of SCAFFOLD: Δc_i = c_i+ - c_i


@dataclass(frozen=True)
class ClientInstructions:
    """What the server asks of one client for one round."""

    seed: int  # drives the client's shuffling and augmentation
    epochs: int = 2
    steps: int = 0  # > 0: stop after this many minibatches instead of running full epochs
    batch_size: int = 64
    lr: float = 1e-3  # this round's, after the config's schedule
    augment: bool = True
    optimizer: str = "adam"  # or "sgd"
    momentum: float = 0.0  # sgd's heavy-ball momentum
    weight_decay: float = 0.0  # the optimizer's L2 penalty
    grad_clip: float = 0.0  # > 0: each step's gradient clipped to this total L2 norm
    # Extras for other algorithms (client/hooks.py); the defaults leave plain FedAvg training.
    proximal_mu: float = 0.0  # FedProx
    control_server: Weights | None = None  # SCAFFOLD's c; None: SCAFFOLD is off (c_i is the client's own)
    feddyn_alpha: float = 0.0  # FedDyn's α; 0 = off (g_k is the client's own)
    fedlc_tau: float = 0.0  # FedLC's logit calibration (client/losses.py); 0 = off
    feddecorr_beta: float = 0.0  # FedDecorr's decorrelation weight (client/losses.py); 0 = off
    local_bn: bool = False  # FedBN: the client trains and keeps its own BatchNorm layers
    # Client-level DP (privacy/mechanism.py): clip the sent update to dp_clip (0 = off), add
    # N(0, dp_noise_std²) to it and N(0, dp_count_std²) to the clipped-count report (client noise).
    dp_clip: float = 0.0
    dp_noise_std: float = 0.0
    dp_count_std: float = 0.0
    dp_seed: int = 0  # 0: noise from the OS's CSPRNG; > 0: seeded by (dp_seed, seed), not private
    # Record-level DP-SGD (privacy/dpsgd.py): clip each image's gradient to dp_sample_clip (0 = off),
    # noise multiplier dp_sample_noise; the client refuses a round past its own dp_budget at dp_delta.
    dp_sample_clip: float = 0.0
    dp_sample_noise: float = 0.0
    dp_delta: float = 1e-5
    dp_budget: float = 0.0  # 0 = no budget
    # Robustness studies (client/adversary.py): an injected fault, or this client's attack.
    fault: str = ""  # "", "raise", "nan" or "hang"
    attack: str = "none"  # "none", "sign_flip", "scale", "gaussian", "label_flip" or "bn_stats"
    attack_scale: float = 0.0  # 0 = the attack's default strength


@dataclass
class ClientResult:
    """One client's reply to a fit instruction."""

    client_id: int
    weights: Weights  # the trained state dict; the round loop drops it once it is folded in
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    state: ClientState = field(default_factory=dict)  # the client's state after the round: stays with the client
    extras: dict[str, Weights] = field(default_factory=dict)  # for the server besides the weights: "control_delta"

    def without_weights(self) -> ClientResult:
        """The metrics alone, for the round's record (weights, state and extras are large)."""
        return ClientResult(self.client_id, {}, self.num_examples, self.metrics)


@dataclass(frozen=True)
class ClientFailure:
    """A client that did not deliver a usable result this round, and why (one line)."""

    client_id: int
    reason: str
