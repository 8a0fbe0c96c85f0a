"""size_weighted and power_of_choice selection, and the context the engine hands selectors."""

from __future__ import annotations

import numpy as np
import pytest

from fedcifar.strategy.registry import SELECTORS
from fedcifar.strategy.selection import SelectionContext, power_of_choice, size_weighted

SIZES = np.array([10] * 8 + [400] * 2)


def test_size_weighted_is_seeded_without_replacement_and_favours_large_clients():
    a = size_weighted(SIZES, 4, seed=0, server_round=1)
    assert a == size_weighted(SIZES, 4, seed=0, server_round=1) and len(set(a)) == 4
    counts = np.zeros(len(SIZES))
    for r in range(1, 201):
        counts[size_weighted(SIZES, 2, seed=0, server_round=r)] += 1
    assert counts[8:].min() > 150 and counts[:8].max() < 40  # the two big clients almost always


def test_power_of_choice_picks_the_highest_loss_candidates():
    losses = {c: float(c % 5) + 0.1 * c for c in range(10)}
    asked = []

    def local_losses(ids):
        asked.append(list(ids))
        return [losses[c] for c in ids]

    sizes = np.full(10, 50)
    chosen = power_of_choice(local_losses, sizes, k=3, d=6, seed=0, server_round=4)
    (candidates,) = asked
    assert len(candidates) == 6 and candidates == size_weighted(sizes, 6, 0, 4)
    expected = sorted(sorted(candidates, key=lambda c: -losses[c])[:3])
    assert chosen == expected
    assert min(losses[c] for c in chosen) >= max(losses[c] for c in candidates if c not in chosen)


def test_power_of_choice_with_d_equal_to_n_is_the_global_top_k():
    losses = np.random.default_rng(3).uniform(size=12)
    chosen = power_of_choice(lambda ids: losses[list(ids)], np.full(12, 7), k=4, d=12, seed=1, server_round=2)
    assert chosen == sorted(np.argsort(-losses)[:4].tolist())


def test_selectors_take_a_context_and_power_of_choice_defaults_to_twice_k_candidates():
    asked = []

    def local_losses(ids):
        asked.append(len(ids))
        return [0.0] * len(ids)

    ctx = SelectionContext(server_round=3, seed=0, k=2, sizes=np.full(10, 5), local_losses=local_losses)
    for name, select in SELECTORS.items():
        chosen = select(ctx)
        assert len(chosen) == len(set(chosen)) and chosen == sorted(chosen), name
        assert name == "poisson" or len(chosen) == 2, name  # poisson's count varies (rate k / N)
    assert asked == [4]
    with pytest.raises(RuntimeError, match="local_losses"):
        SELECTORS["power_of_choice"](SelectionContext(1, 0, 2, np.full(4, 5)))
