"""Per-client fairness: the pure functions, and the engine's columns against a slow reference
that evaluates the exported model and weighs each test image for each client separately."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fedcifar.config import build_config
from fedcifar.data.augment import Normalize
from fedcifar.fairness import FAIRNESS_COLUMNS, client_accuracies, fairness_summary
from fedcifar.federation import partition_for
from fedcifar.model import ModelSpec
from fedcifar.sim.engine import run_training
from fedcifar.track.checkpoint import MODEL_FILE, read_metadata


def test_client_accuracy_is_the_label_mix_weighted_class_accuracy():
    counts = np.array([[3, 1, 0], [0, 0, 5], [1, 1, 1]])
    class_acc = np.array([0.5, 1.0, 0.2])
    np.testing.assert_allclose(client_accuracies(counts, class_acc), [0.625, 0.2, 1.7 / 3])


def test_classes_missing_from_the_test_set_are_left_out():
    counts = np.array([[2, 2, 0], [0, 0, 4]])
    acc = client_accuracies(counts, np.array([0.5, np.nan, 0.3]))
    assert acc[0] == pytest.approx(0.5) and acc[1] == pytest.approx(0.3)
    assert np.isnan(client_accuracies(np.array([[0, 1, 0]]), np.array([0.5, np.nan, 0.3]))[0])


def test_summary_is_mean_p10_min_and_population_std():
    acc = np.arange(11) / 10
    summary = fairness_summary(acc)
    assert summary == pytest.approx(
        {"client_acc_mean": 0.5, "client_acc_p10": 0.1, "client_acc_min": 0.0, "client_acc_std": np.std(acc)}
    )
    assert all(np.isnan(v) for v in fairness_summary(np.array([np.nan])).values())


def test_fairness_columns_equal_a_client_by_client_reference(tmp_path, cifar):
    cfg = build_config(
        "paper-cpu",
        None,
        dict(rounds=1, num_clients=8, clients_per_round=2, local_steps=3, eval_limit=600, precision="fp32"),
    )
    frame = run_training(cfg, tmp_path, cifar, progress=False)
    assert set(FAIRNESS_COLUMNS) <= set(frame)

    spec = ModelSpec.from_metadata(read_metadata(tmp_path / MODEL_FILE))
    model = spec.build()
    model.load_state_dict(load_file(tmp_path / MODEL_FILE))
    model.eval()
    images, labels = cifar.test_x[:600], cifar.test_y[:600]
    with torch.inference_mode():
        correct = (model(Normalize(torch.device("cpu"))(images)).argmax(1) == labels).numpy()
    y = labels.numpy()
    train_labels = cifar.train_y.numpy()
    reference = []
    for indices in partition_for(cfg, train_labels):  # every client of the federation, one at a time
        mix = np.bincount(train_labels[indices], minlength=100).astype(float)
        per_image = np.array([mix[c] / (y == c).sum() for c in y])  # weight of each test image for this client
        per_image /= mix[np.unique(y)].sum()  # renormalise over the classes the test slice holds
        reference.append(float((per_image * correct).sum()))
    reference = np.array(reference)
    row = frame.iloc[-1]
    assert row["client_acc_mean"] == pytest.approx(reference.mean(), abs=1e-9)
    assert row["client_acc_min"] == pytest.approx(reference.min(), abs=1e-9)
    assert row["client_acc_std"] == pytest.approx(reference.std(), abs=1e-9)
    assert row["client_acc_p10"] == pytest.approx(np.percentile(reference, 10), abs=1e-9)
    saved = pd.read_csv(tmp_path / "metrics.csv")
    assert saved["client_acc_p10"].iloc[-1] == pytest.approx(row["client_acc_p10"])
