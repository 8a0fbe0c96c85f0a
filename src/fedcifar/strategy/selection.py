"""Client selection: which clients train in a round. Seeded per (seed, round).

- ``uniform``: K of N uniformly without replacement (the paper's).
- ``size_weighted``: K of N without replacement, with probability proportional to data size.
- ``power_of_choice`` (Cho, Wang and Joshi 2020, "Client Selection in Federated Learning:
  Convergence Analysis and Power-of-Choice Selection Strategies"): draw d candidates with
  probability proportional to data size, without replacement, ask each for its local loss
  on the current global model, and keep the K with the highest loss. With ``poc_samples``
  the loss is estimated on that many of the client's images (the paper's cpow-d variant).
- ``poisson``: each client takes part independently with probability q (``poisson_rate``), so
  the number of clients varies from round to round. This is the sampling under which DP's
  amplification by subsampling is proven for add-or-remove neighbours (the accountant's).

Selectors take a :class:`SelectionContext`, so the engine never branches on the method; the
context's ``local_losses`` callback is how power_of_choice reaches the clients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LocalLosses = Callable[[Sequence[int]], Sequence[float]]


def round_rng(seed: int, server_round: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5E1EC7, server_round])


@dataclass(frozen=True)
class SelectionContext:
    server_round: int
    seed: int
    k: int  # clients to select
    sizes: np.ndarray  # examples per client (defines the number of clients)
    candidates: int = 0  # power_of_choice's d; 0 = min(N, 2K)
    local_losses: LocalLosses | None = None  # loss of the current global model on each listed client
    rate: float = 0.0  # poisson's q
    rng: np.random.Generator | None = None  # None: round_rng(seed, server_round); DP passes a secret one


def uniform(
    num_clients: int, k: int, seed: int, server_round: int, rng: np.random.Generator | None = None
) -> list[int]:
    """k of num_clients, uniformly without replacement, sorted."""
    chosen = (rng or round_rng(seed, server_round)).choice(num_clients, size=k, replace=False)
    return sorted(int(c) for c in chosen)


def size_weighted(sizes: Sequence[int], k: int, seed: int, server_round: int) -> list[int]:
    """k clients without replacement, with probability proportional to their size, sorted."""
    p = np.asarray(sizes, dtype=np.float64)
    chosen = round_rng(seed, server_round).choice(len(p), size=k, replace=False, p=p / p.sum())
    return sorted(int(c) for c in chosen)


def power_of_choice(
    local_losses: LocalLosses, sizes: Sequence[int], k: int, d: int, seed: int, server_round: int
) -> list[int]:
    """The k highest-loss clients among d size-weighted candidates, sorted by id."""
    candidates = size_weighted(sizes, d, seed, server_round)
    losses = np.asarray(local_losses(candidates), dtype=np.float64)
    if losses.shape != (len(candidates),):
        raise ValueError(f"local_losses returned {losses.shape} values for {len(candidates)} candidates")
    top = np.argsort(-losses, kind="stable")[:k]  # ties: the lower client id wins
    return sorted(candidates[i] for i in top)


def poisson(num_clients: int, rate: float, rng: np.random.Generator) -> list[int]:
    """Each client independently with probability ``rate``, sorted (possibly none)."""
    return [int(c) for c in np.flatnonzero(rng.random(num_clients) < rate)]


def select_uniform(ctx: SelectionContext) -> list[int]:
    return uniform(len(ctx.sizes), ctx.k, ctx.seed, ctx.server_round, ctx.rng)


def select_poisson(ctx: SelectionContext) -> list[int]:
    rate = ctx.rate or ctx.k / len(ctx.sizes)
    return poisson(len(ctx.sizes), rate, ctx.rng or round_rng(ctx.seed, ctx.server_round))


def select_size_weighted(ctx: SelectionContext) -> list[int]:
    return size_weighted(ctx.sizes, ctx.k, ctx.seed, ctx.server_round)


def select_power_of_choice(ctx: SelectionContext) -> list[int]:
    if ctx.local_losses is None:
        raise RuntimeError("power_of_choice needs a local_losses callback in its SelectionContext")
    d = ctx.candidates or min(len(ctx.sizes), 2 * ctx.k)
    return power_of_choice(ctx.local_losses, ctx.sizes, ctx.k, d, ctx.seed, ctx.server_round)
