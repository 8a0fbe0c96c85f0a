"""Client selection: which clients train in a round. Seeded per (seed, round)."""

from __future__ import annotations

import numpy as np


def round_rng(seed: int, server_round: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5E1EC7, server_round])


def uniform(num_clients: int, k: int, seed: int, server_round: int) -> list[int]:
    """k of num_clients, uniformly without replacement, sorted."""
    chosen = round_rng(seed, server_round).choice(num_clients, size=k, replace=False)
    return sorted(int(c) for c in chosen)
