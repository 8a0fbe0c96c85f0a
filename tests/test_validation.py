"""The validation split (``val_size``): held out before the partition, stratified, seeded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedcifar.config import ConfigError, build_config
from fedcifar.data.partition import PartitionError, stratified_holdout
from fedcifar.federation import partition_for, validation_indices
from helpers import tiny_config

CIFAR_LIKE = np.repeat(np.arange(100), 500)  # CIFAR-100's training labels: 500 a class
UNEVEN = np.random.default_rng(3).integers(0, 100, 5000)
# sha256 of partition_for(...) on UNEVEN before val_size existed (computed on main at 0545d8f).
BEFORE = {
    "dirichlet": "fc02b1ffde03dc0b2c31458f42cc88a47712087b036c5ca66bdf1710f6bbff0b",
    "iid": "2a63945808b46ac9ff2089d4c7061331794bf7535103fa406f65fe9206ff4f18",
    "shards": "3504df3e53aecb56920aad41cb17de90e4046297edeb22a18f2adf54dc4c708c",
}


def _cfg(**over):
    return build_config("paper", None, {"num_clients": 8, "clients_per_round": 2, **over})


def _digest(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("partitioner", sorted(BEFORE))
def test_val_size_zero_leaves_the_partition_bit_identical(partitioner):
    cfg = _cfg(partitioner=partitioner)
    assert cfg.val_size == 0 and len(validation_indices(cfg, UNEVEN)) == 0
    assert _digest(partition_for(cfg, UNEVEN)) == BEFORE[partitioner]


@pytest.mark.parametrize("partitioner", sorted(BEFORE))
def test_val_indices_are_disjoint_from_every_client_and_the_rest_is_partitioned(partitioner):
    cfg = _cfg(partitioner=partitioner, val_size=5000)
    val = validation_indices(cfg, CIFAR_LIKE)
    parts = partition_for(cfg, CIFAR_LIKE)
    assert len(val) == 5000 and len(np.unique(val)) == 5000
    for p in parts:
        assert len(np.intersect1d(p, val)) == 0
        assert np.all(np.diff(p) > 0)  # sorted, no repeats, like every partition
    everything = np.sort(np.concatenate([val, *parts]))
    assert np.array_equal(everything, np.arange(len(CIFAR_LIKE)))  # each image once: clients or val


def test_val_indices_are_stratified_and_deterministic_per_seed():
    val = validation_indices(_cfg(val_size=5000), CIFAR_LIKE)
    assert np.array_equal(np.bincount(CIFAR_LIKE[val], minlength=100), np.full(100, 50))
    assert np.array_equal(val, validation_indices(_cfg(val_size=5000), CIFAR_LIKE))
    assert not np.array_equal(val, validation_indices(_cfg(val_size=5000, seed=1), CIFAR_LIKE))
    odd = validation_indices(_cfg(val_size=250), CIFAR_LIKE)  # not a multiple of 100: 2 or 3 a class
    counts = np.bincount(CIFAR_LIKE[odd], minlength=100)
    assert counts.sum() == 250 and set(counts) == {2, 3}


def test_stratified_holdout_keeps_each_class_share_of_uneven_labels():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    idx = stratified_holdout(labels, 100, np.random.default_rng(0))
    assert list(np.bincount(labels[idx])) == [60, 30, 10]
    with pytest.raises(PartitionError):
        stratified_holdout(labels, 1000, np.random.default_rng(0))


def test_val_size_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="val_size"):
        _cfg(val_size=-1)
    with pytest.raises(ConfigError, match="val_size"):
        _cfg(val_size=50_000)


def test_federation_and_centralized_refuse_val_size(tmp_path):
    from fedcifar.centralized import run_centralized
    from fedcifar.errors import UserError
    from fedcifar.flower.cli import federation_config

    with pytest.raises(UserError, match="val_size > 0 is for the simulator"):
        federation_config("smoke", ["val_size=100"], 4)
    with pytest.raises(ConfigError, match="val_size > 0 is for federated runs"):
        run_centralized(build_config("smoke", None, {"val_size": 100}), tmp_path, data=None)


def test_tiny_run_scores_the_held_out_images_every_eval(cifar, tmp_path):
    """val_* columns at every evaluated round; the last equals an independent pass over the val images."""
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    from fedcifar.client.evaluate import eval_counts
    from fedcifar.federation import model_spec
    from fedcifar.runtime import resolve_runtime
    from fedcifar.sim.engine import run_training

    cfg = tiny_config(val_size=200, eval_every=2, rounds=3)
    frame = run_training(cfg, tmp_path, cifar, progress=False)
    assert list(frame.dropna(subset=["val_acc"])["round"]) == [2, 3]  # the rounds with test columns too
    assert list(frame.dropna(subset=["test_acc"])["round"]) == [2, 3]
    saved = pd.read_csv(tmp_path / "metrics.csv").iloc[-1]
    model = model_spec(cfg).build()
    weights = load_file(str(tmp_path / "model_global.safetensors"))
    idx = torch.as_tensor(validation_indices(cfg, cifar.train_y.numpy()))
    counts = eval_counts(model, weights, cifar.train_x[idx], cifar.train_y[idx], resolve_runtime(cfg))
    assert counts.n == 200
    assert saved["val_acc"] == pytest.approx(counts.scores()["acc"])
    assert saved["val_loss"] == pytest.approx(counts.scores()["loss"], rel=1e-4)
    assert saved["val_top5"] == pytest.approx(counts.scores()["top5"])
