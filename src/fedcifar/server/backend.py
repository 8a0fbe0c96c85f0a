"""The interface between the round loop and whatever runs the clients.

A backend is told which clients to train, with which instructions, from which global
weights; it yields each client's :class:`~fedcifar.messages.ClientResult` or
:class:`~fedcifar.messages.ClientFailure` as it arrives. It also evaluates a model on the
server's test set and, for power-of-choice selection, on clients' own data.

:class:`fedcifar.sim.local.LocalBackend` runs clients on a thread pool in this process; a
network backend runs them on other machines. Selection, weighting, aggregation, metrics and
checkpoints stay in the loop, written once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fedcifar.client.evaluate import EvalCounts
from fedcifar.messages import ClientFailure, ClientInstructions, ClientResult, Weights
from fedcifar.strategy.base import SecureSum


def largest_first(sizes: Sequence[int]) -> list[int]:
    """Positions of ``sizes`` from largest to smallest (stable for ties): the fold order.

    The loop folds a round's results in this order, and the local backend submits its clients
    in it (LPT scheduling: the longest clients first keep the last worker from idling while one
    big client finishes alone), so its results arrive in the order they are folded.
    """
    return sorted(range(len(sizes)), key=lambda i: -sizes[i])


@dataclass(frozen=True)
class FitTask:
    client_id: int
    instructions: ClientInstructions


class Backend(Protocol):
    workers: int  # clients that train at the same time (for the round's overhead figure)

    def fit(
        self, server_round: int, global_weights: Weights, tasks: Sequence[FitTask]
    ) -> Iterator[ClientResult | ClientFailure]:
        """Train every task's client from ``global_weights``; yield one item per task, in any order."""
        ...

    def evaluate(self, weights: Weights) -> EvalCounts:
        """``weights`` on the server's test set."""
        ...

    def client_losses(self, server_round: int, weights: Weights, client_ids: Sequence[int]) -> list[float]:
        """The loss of ``weights`` on each listed client's training data (power-of-choice)."""
        ...


@runtime_checkable
class Validates(Protocol):
    """A backend that holds the config's validation images (``val_size`` > 0): the simulator."""

    def validate(self, weights: Weights) -> EvalCounts: ...


@runtime_checkable
class HoldsClientState(Protocol):
    """A backend that keeps its clients' own state (the simulator), so the checkpoint must too.

    Under Flower each SuperNode keeps its client's state itself, out of the server's reach.
    """

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None: ...


@runtime_checkable
class SumsSecurely(Protocol):
    """A backend that can aggregate by secure aggregation (``secure_aggregation=true``): Flower's.

    ``fit_sum`` trains the tasks and returns only the sum of their updates (each scaled by its
    client's factor), the failures, and the seconds of each protocol stage.
    """

    def fit_sum(
        self, server_round: int, global_weights: Weights, tasks: Sequence[FitTask], factors: Mapping[int, float]
    ) -> tuple[SecureSum, list[ClientFailure], dict[str, float]]: ...
