"""Privacy accounting with Google's ``dp-accounting``, matching the sampling actually run.

Client level, one Gaussian release per round (:mod:`fedcifar.privacy.mechanism`):

- **Poisson sampling** (``client_selection=poisson``, each client in with probability q): the
  add-or-remove-one relation, ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``; ε is the smaller
  of the RDP and the PLD accountants' bounds (both are upper bounds; PLD is usually tighter).
- **Fixed-size uniform sampling** (m of N without replacement, the paper's): only the
  replace-one relation has an amplification result here
  (``SampledWithoutReplacementDpEvent``, RDP only: the PLD accountant has none). Replacing one
  client moves the sum of clipped updates by up to 2C, not C, so the Gaussian event gets noise
  multiplier z/2 (dp-accounting issue #378: passing z would understate ε by up to 4x).
- **Every client every round** (m = N): a plain Gaussian per round, add-or-remove-one, RDP and PLD.

Record level (DP-SGD inside one client): ``steps`` Poisson-sampled Gaussian steps per round at
rate batch/n, composed over the rounds that client trained; same accountants.

The accountant's state is the list of (noise multiplier, count) it has composed: a JSON list
in the checkpoint, so a resumed run continues the same composition.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dp_accounting


def _dp_accounting():
    """dp-accounting, imported on first use: it takes about a second (scipy), and only DP runs need it."""
    import dp_accounting
    from dp_accounting import pld, rdp  # noqa: F401  (loads the submodules)

    return dp_accounting


@dataclass(frozen=True)
class Sampling:
    """How the participants of one release are drawn from ``population`` units (clients or images)."""

    population: int
    size: int  # fixed-size: how many, without replacement
    poisson_rate: float = 0.0  # > 0: Poisson sampling at this rate instead

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        relation = _dp_accounting().NeighboringRelation
        if self.poisson_rate > 0 or self.size >= self.population:
            return relation.ADD_OR_REMOVE_ONE
        return relation.REPLACE_ONE

    def event(self, noise_multiplier: float) -> dp_accounting.DpEvent:
        """One release of a Gaussian sum with this noise multiplier (std / clip)."""
        dp_accounting = _dp_accounting()
        if self.poisson_rate > 0:
            return dp_accounting.PoissonSampledDpEvent(
                self.poisson_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
            )
        if self.size >= self.population:
            return dp_accounting.GaussianDpEvent(noise_multiplier)
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.size, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
        )


def epsilon(sampling: Sampling, releases: Sequence[tuple[float, int]], delta: float) -> float:
    """ε at ``delta`` after ``releases`` = [(noise multiplier, count), ...] of one sampling scheme.

    The minimum of the RDP bound and, where dp-accounting has one for this event, the PLD bound.
    0 before any release; inf if a release had no noise.
    """
    releases = [(z, n) for z, n in releases if n > 0]
    if not releases:
        return 0.0
    if any(z <= 0 for z, _ in releases):
        return math.inf
    dp_accounting = _dp_accounting()
    event = dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(sampling.event(z), n) for z, n in releases]
    )
    return _best_epsilon(event, sampling.relation, delta)


def poisson_epsilon(releases: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` after ``releases`` = [(rate q, noise multiplier, count), ...] of Poisson-sampled
    Gaussian releases (add-or-remove-one): DP-SGD's steps, whose rate may change between rounds."""
    releases = [(q, z, n) for q, z, n in releases if n > 0]
    if not releases:
        return 0.0
    if any(z <= 0 for _, z, _ in releases):
        return math.inf
    dp_accounting = _dp_accounting()
    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
                if q < 1
                else dp_accounting.GaussianDpEvent(z),
                n,
            )
            for q, z, n in releases
        ]
    )
    return _best_epsilon(event, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, delta)


def _best_epsilon(event: dp_accounting.DpEvent, relation: dp_accounting.NeighboringRelation, delta: float) -> float:
    """The smaller of the RDP and (under add-or-remove-one) the PLD accountants' ε for ``event``."""
    dp_accounting = _dp_accounting()
    accountants = [dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)]
    if relation is dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE:
        accountants.append(dp_accounting.pld.PLDAccountant(relation, value_discretization_interval=1e-3))
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # RDP orders that do not converge are dropped, with a warning each
    try:
        return min(a.compose(event).get_epsilon(delta) for a in accountants if a.supports(event))
    finally:
        absl.setLevel(level)


def rdp_epsilon(sampling: Sampling, noise_multiplier: float, count: int, delta: float) -> float:
    """ε from the RDP accountant alone (for comparisons with published RDP figures)."""
    dp_accounting = _dp_accounting()
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=sampling.relation)
    return accountant.compose(dp_accounting.SelfComposedDpEvent(sampling.event(noise_multiplier), count)).get_epsilon(
        delta
    )


def add_release(releases: list[list[float]], noise_multiplier: float, count: int = 1) -> list[list[float]]:
    """``releases`` with ``count`` more releases at ``noise_multiplier`` (merged with the last if equal)."""
    out = [list(r) for r in releases]
    if out and out[-1][0] == noise_multiplier:
        out[-1][1] += count
    else:
        out.append([noise_multiplier, count])
    return out
