"""Label partitions of a dataset over clients: pure functions of labels and a generator.

Each partitioner returns one sorted int64 index array per client. Together they cover every
index exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Partition = list[np.ndarray]


class PartitionError(ValueError):
    """The requested partition cannot be made (for example, a minimum size that never holds)."""


def iid_partition(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> Partition:
    """Shuffle and cut into ``num_clients`` near-equal parts."""
    order = rng.permutation(len(labels))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]


def shards_partition(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, shards_per_client: int = 2
) -> Partition:
    """McMahan et al.'s pathological split: sort by label, cut into shards, deal shards out."""
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise PartitionError(f"{num_shards} shards requested for {len(labels)} samples")
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])).astype(np.int64) for row in dealt]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_partition_size: int = 10,
    max_tries: int = 100,
) -> Partition:
    """Per class, split its samples over clients by proportions drawn from Dir(alpha).

    Like Flower's ``DirichletPartitioner``, the whole draw is repeated until every client
    holds at least ``min_partition_size`` samples.
    """
    if alpha <= 0:
        raise PartitionError(f"alpha must be > 0, got {alpha}")
    if num_clients * min_partition_size > len(labels):
        raise PartitionError(f"{num_clients} clients x min size {min_partition_size} exceeds {len(labels)} samples")
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in result) >= min_partition_size:
            return result
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) draw gave every one of {num_clients} clients "
        f">= {min_partition_size} samples in {max_tries} tries; lower min_partition_size "
        "or raise alpha"
    )


def stratified_holdout(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices drawn without replacement so that each class keeps its share: sorted int64.

    Class ``c`` of ``n_c`` samples gives ``floor(size * n_c / N)`` of them; the few left over
    (when ``size`` is not a multiple of the class count) go to classes drawn from ``rng``,
    one each. CIFAR-100's 500 images a class and ``size=5000`` give exactly 50 a class.
    """
    labels = np.asarray(labels)
    if not 0 <= size < len(labels):
        raise PartitionError(f"a held-out split of {size} needs 0 <= size < {len(labels)} samples")
    classes, counts = np.unique(labels, return_counts=True)
    quota = size * counts // len(labels)
    extra = rng.choice(len(classes), size=size - int(quota.sum()), replace=False)
    quota[extra] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


PARTITIONERS: dict[str, Callable[..., Partition]] = {
    "iid": iid_partition,
    "shards": shards_partition,
    "dirichlet": dirichlet_partition,
}


def make_partition(
    labels: np.ndarray,
    kind: str,
    num_clients: int,
    seed: int,
    alpha: float = 0.4,
    min_partition_size: int = 10,
    shards_per_client: int = 2,
) -> Partition:
    """Dispatch by name with a generator of its own, derived from ``seed`` only."""
    rng = np.random.default_rng([seed, 0xDA7A])
    labels = np.asarray(labels)
    if kind == "iid":
        return iid_partition(labels, num_clients, rng)
    if kind == "shards":
        return shards_partition(labels, num_clients, rng, shards_per_client)
    if kind == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha, rng, min_partition_size)
    raise PartitionError(f"unknown partitioner {kind!r}; choose one of: {', '.join(PARTITIONERS)}")


def class_counts(labels: np.ndarray, partition: Partition, num_classes: int) -> np.ndarray:
    """(clients, classes) matrix of sample counts."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in partition])


def skew(counts: np.ndarray) -> np.ndarray:
    """Per client, 1 - normalised label entropy: 0 for uniform classes, 1 for a single class."""
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(frac > 0, frac * np.log(frac), 0.0), axis=1)
    return 1.0 - ent / np.log(counts.shape[1])
