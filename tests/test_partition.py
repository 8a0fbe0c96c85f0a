import numpy as np
import pytest

from fedcifar.data.partition import (
    PartitionError,
    class_counts,
    dirichlet_partition,
    iid_partition,
    make_partition,
    shards_partition,
    skew,
)


@pytest.fixture(scope="module")
def labels():
    return np.repeat(np.arange(100), 500)  # CIFAR-100's train label histogram


def _assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n, "every sample goes to exactly one client"
    assert np.array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("kind", ["dirichlet", "iid", "shards"])
def test_partitions_cover_each_sample_exactly_once(labels, kind):
    parts = make_partition(labels, kind, 64, seed=3)
    assert len(parts) == 64
    _assert_exact_cover(parts, len(labels))


@pytest.mark.parametrize("kind", ["dirichlet", "iid", "shards"])
def test_partitions_are_deterministic_under_seed(labels, kind):
    a = make_partition(labels, kind, 64, seed=7)
    b = make_partition(labels, kind, 64, seed=7)
    c = make_partition(labels, kind, 64, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_guarantees_minimum_size_by_resampling(labels):
    rng = np.random.default_rng(0)
    # With alpha this small, a single draw leaves some of 64 clients nearly empty.
    parts = dirichlet_partition(labels, 64, alpha=0.05, rng=rng, min_partition_size=200, max_tries=1000)
    assert min(len(p) for p in parts) >= 200
    _assert_exact_cover(parts, len(labels))


def test_dirichlet_impossible_minimum_is_a_clear_error(labels):
    with pytest.raises(PartitionError, match="exceeds"):
        dirichlet_partition(labels, 64, alpha=0.4, rng=np.random.default_rng(0), min_partition_size=10_000)


def test_skew_grows_as_alpha_shrinks(labels):
    means = []
    for alpha in (100.0, 1.0, 0.4, 0.1):
        parts = make_partition(labels, "dirichlet", 64, seed=0, alpha=alpha, min_partition_size=1)
        means.append(skew(class_counts(labels, parts, 100)).mean())
    assert means == sorted(means), f"mean skew should rise as alpha falls: {means}"
    assert means[0] < 0.05 < means[-1]


def test_iid_sizes_are_balanced_and_shards_hold_few_classes(labels):
    iid = iid_partition(labels, 64, np.random.default_rng(0))
    assert max(map(len, iid)) - min(map(len, iid)) <= 1
    shards = shards_partition(labels, 50, np.random.default_rng(0), shards_per_client=2)
    counts = class_counts(labels, shards, 100)
    assert ((counts > 0).sum(axis=1) <= 4).all()  # 2 shards, each spanning at most 2 labels


def test_class_counts_rows_sum_to_client_sizes(labels):
    parts = make_partition(labels, "dirichlet", 16, seed=1)
    counts = class_counts(labels, parts, 100)
    assert counts.shape == (16, 100)
    assert np.array_equal(counts.sum(axis=1), [len(p) for p in parts])
    assert np.array_equal(counts.sum(axis=0), np.full(100, 500))
    assert skew(np.eye(100, dtype=int)[:1] * 5)[0] == pytest.approx(1.0)
