"""What the server knows about its clients before training: sizes and label histograms.

In the simulation both come from the partition. In a deployment each client would report
them once (FedDisco's clients report only their scalar discrepancy), like Flower's client
properties. Selection (size_weighted, power_of_choice) and weighting (feddisco) read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Population:
    sizes: np.ndarray  # (clients,) training examples per client
    label_counts: np.ndarray  # (clients, classes) examples per class

    @classmethod
    def from_partition(cls, labels: np.ndarray, partition: Sequence[np.ndarray], num_classes: int = 100) -> Population:
        counts = np.stack([np.bincount(labels[idx], minlength=num_classes) for idx in partition])
        return cls(counts.sum(axis=1), counts)

    def label_discrepancy(self) -> np.ndarray:
        """L2 distance between each client's label distribution and the uniform one (FedDisco's d_k)."""
        return label_discrepancy(self.label_counts)


def label_discrepancy(label_counts: np.ndarray) -> np.ndarray:
    """||D_k - U||_2 per row, where D_k is the row normalised to sum 1 and U is uniform."""
    counts = np.asarray(label_counts, dtype=np.float64)
    dist = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return np.linalg.norm(dist - 1.0 / counts.shape[1], axis=1)
