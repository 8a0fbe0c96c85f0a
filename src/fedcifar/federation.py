"""What a config means for a federation, independent of where its clients run.

The model to build, the client partition, and each client's instructions and seed for a
round. The round loop, every backend and the centralized reference derive these from the
config alone, so they agree without passing them around.

Randomness: no generator carries hidden state between rounds. The partition, each round's
selection and each client's shuffling and augmentation come from generators derived from
(seed, round, client), so a resumed run redraws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from fedcifar.config import Config
from fedcifar.data.partition import Partition, make_partition, stratified_holdout
from fedcifar.messages import ClientInstructions
from fedcifar.model import ModelSpec

NUM_CLASSES = 100


def model_spec(cfg: Config) -> ModelSpec:
    return ModelSpec(cfg.model, cfg.norm, NUM_CLASSES)


def validation_indices(cfg: Config, labels: np.ndarray) -> np.ndarray:
    """The ``val_size`` training images held out for validation (sorted; empty when 0).

    A class-stratified sample from a generator of its own (seed, 0x5A1): no client holds them.
    """
    if cfg.val_size == 0:
        return np.zeros(0, dtype=np.int64)
    return stratified_holdout(labels, cfg.val_size, np.random.default_rng([cfg.seed, 0x5A1]))


def partition_for(cfg: Config, labels: np.ndarray) -> Partition:
    """Each client's indices into the training set, after the validation images are taken out."""
    labels = np.asarray(labels)
    held_out = validation_indices(cfg, labels)
    rest = np.setdiff1d(np.arange(len(labels)), held_out) if len(held_out) else None
    parts = make_partition(
        labels if rest is None else labels[rest],
        cfg.partitioner,
        cfg.num_clients,
        cfg.seed,
        alpha=cfg.alpha,
        min_partition_size=cfg.min_partition_size,
        shards_per_client=cfg.shards_per_client,
    )
    return parts if rest is None else [rest[p] for p in parts]


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)[0])


@functools.lru_cache(maxsize=8)
def malicious_clients(cfg: Config) -> frozenset[int]:
    """The fixed set of Byzantine clients: round(attack_fraction · N) of them, drawn from the seed."""
    if cfg.attack == "none":
        return frozenset()
    count = round(cfg.attack_fraction * cfg.num_clients)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xB12]))
    return frozenset(int(c) for c in rng.choice(cfg.num_clients, size=count, replace=False))


def injected_fault(cfg: Config, server_round: int, client_id: int) -> str:
    """The fault this client's update suffers this round ("" for none), drawn from (seed, round, client)."""
    if cfg.fault_rate <= 0:
        return ""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, server_round, client_id, 0xFA17]))
    return cfg.fault_kind if rng.random() < cfg.fault_rate else ""


def round_lr(cfg: Config, server_round: int) -> float:
    """The clients' learning rate in round ``server_round`` (1-based) under ``cfg.lr_schedule``."""
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay ** (server_round - 1)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (1 + math.cos(math.pi * (server_round - 1) / cfg.rounds)) / 2
    return cfg.lr


def client_instructions(cfg: Config, server_round: int, client_id: int, extra: dict[str, Any]) -> ClientInstructions:
    """The config's local-training settings for one client, plus the strategy's extras.

    A malicious client (see :func:`malicious_clients`) is told its attack, and a client drawn
    for a fault its fault: the update carries them out (:mod:`fedcifar.client.adversary`).
    """
    malicious = client_id in malicious_clients(cfg)
    return ClientInstructions(
        seed=client_seed(cfg.seed, server_round, client_id),
        epochs=cfg.local_epochs,
        steps=cfg.local_steps,
        batch_size=cfg.batch_size,
        lr=round_lr(cfg, server_round),
        augment=cfg.augment,
        optimizer=cfg.client_optimizer,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        fedlc_tau=cfg.fedlc_tau,
        feddecorr_beta=cfg.feddecorr_beta,
        fault=injected_fault(cfg, server_round, client_id),
        attack=cfg.attack if malicious else "none",
        attack_scale=cfg.attack_scale,
        **extra,
    )


def loss_sample(cfg: Config, server_round: int, client_id: int, n: int) -> torch.Tensor | None:
    """Which of a client's ``n`` images power-of-choice scores it on: a seeded subset, or None for all."""
    if not 0 < cfg.poc_samples < n:
        return None
    g = torch.Generator().manual_seed(client_seed(cfg.seed, server_round, client_id) + 1)
    return torch.randperm(n, generator=g)[: cfg.poc_samples]
