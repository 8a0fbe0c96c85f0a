"""How much each client's update counts in the server's mean: its aggregation factor p_k.

- ``num_examples`` (default, FedAvg): p_k proportional to the client's dataset size n_k.
- ``uniform``: every participating client counts the same (pairs with size_weighted
  selection, which already favours large clients: Li et al. 2020, "On the Convergence of
  FedAvg on Non-IID Data", sampling scheme I).
- ``feddisco``: discrepancy-aware factors of Ye et al. 2023, "FedDisco: Federated Learning
  with Discrepancy-Aware Collaboration" (ICML), the paper's "adaptive client weighting":
  p_k ∝ ReLU(n_k - a·d_k + b), with n_k the client's share of the round's examples and d_k
  the L2 distance between its label distribution and the uniform one. Clients whose labels
  are far from balanced count less than their size alone would give them. Defaults a = 0.5,
  b = 0.1 as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcifar.strategy.population import Population


def feddisco_factors(sizes: np.ndarray, discrepancy: np.ndarray, a: float = 0.5, b: float = 0.1) -> np.ndarray:
    """Normalised FedDisco factors for one round's clients (falls back to sizes if all clip to 0)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    share = sizes / sizes.sum()
    raw = np.maximum(share - a * np.asarray(discrepancy, dtype=np.float64) + b, 0.0)
    if raw.sum() <= 0:
        return share
    return raw / raw.sum()


@dataclass(frozen=True)
class Weighting:
    kind: str = "num_examples"
    disco_a: float = 0.5
    disco_b: float = 0.1

    def for_round(self, client_ids: Sequence[int], population: Population | None) -> dict[int, float] | None:
        """Factors for the round's clients, or None to count each result by its num_examples."""
        if self.kind == "num_examples":
            return None
        if self.kind == "uniform":
            return {int(c): 1.0 for c in client_ids}
        if self.kind == "feddisco":
            if population is None:
                raise RuntimeError("feddisco weighting needs the client population (Strategy.setup)")
            ids = np.asarray(client_ids, dtype=np.int64)
            w = feddisco_factors(population.sizes[ids], population.label_discrepancy()[ids], self.disco_a, self.disco_b)
            return {int(c): float(x) for c, x in zip(ids, w, strict=True)}
        raise ValueError(f"unknown client weighting {self.kind!r}")
