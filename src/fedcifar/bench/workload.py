"""The federated workload every implementation in the benchmark runs, and its JSON form.

The schedule (which clients train in which round) is drawn once here, with fedcifar's own
uniform selector, and handed to every implementation, so all of them train exactly the same
clients on exactly the same Dirichlet partition.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcifar.client.train import local_images
from fedcifar.data.partition import Partition, make_partition
from fedcifar.strategy.selection import uniform


@dataclass(frozen=True)
class Workload:
    """The paper configuration by default: ResNet-18, 16 of 64 Dirichlet(0.4) clients, 2 epochs."""

    rounds: int = 3
    num_clients: int = 64
    clients_per_round: int = 16
    local_epochs: int = 2
    local_steps: int = 0  # > 0: each client stops after this many minibatches (tests, smoke runs)
    batch_size: int = 64
    lr: float = 1e-3
    alpha: float = 0.4
    min_partition_size: int = 10
    seed: int = 0
    data_dir: str = ""
    eval_limit: int = 1000  # test images the engines evaluate after the last round (timed apart)

    def partition(self, labels: np.ndarray) -> Partition:
        return make_partition(
            labels, "dirichlet", self.num_clients, self.seed, self.alpha, min_partition_size=self.min_partition_size
        )

    def schedule(self) -> list[list[int]]:
        """The clients trained in rounds 1..rounds."""
        return [uniform(self.num_clients, self.clients_per_round, self.seed, r) for r in range(1, self.rounds + 1)]

    def client_images(self, n: int) -> int:
        """Images one client of ``n`` samples trains in a round."""
        return local_images(n, self.batch_size, self.local_epochs, self.local_steps)

    def images_per_round(self, labels: np.ndarray) -> list[int]:
        """Training images each round, summed over the round's clients."""
        sizes = [len(p) for p in self.partition(labels)]
        return [sum(self.client_images(sizes[c]) for c in clients) for clients in self.schedule()]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["schedule"] = self.schedule()
        return out

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Workload:
        data = json.loads(Path(path).read_text())
        data.pop("schedule", None)
        return cls(**data)


def measured(values: list[float], warmup: int = 1) -> list[float]:
    """Per-round values without the warm-up round(s), unless nothing would be left."""
    return values[warmup:] if len(values) > warmup else values
