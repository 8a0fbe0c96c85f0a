import numpy as np
import pytest
import torch

from fedcifar.messages import ClientResult
from fedcifar.model.resnet import build_model
from fedcifar.strategy.aggregate import WeightedMean, weighted_mean
from fedcifar.strategy.base import FitRound
from fedcifar.strategy.fedavg import FedAvg


def _state(rng, scale):
    return {
        "conv.weight": torch.tensor(rng.normal(size=(2, 3)) * scale, dtype=torch.float32),
        "bn.running_mean": torch.tensor(rng.normal(size=3), dtype=torch.float32),
        "bn.running_var": torch.tensor(rng.uniform(0.5, 2, size=3), dtype=torch.float32),
        "bn.num_batches_tracked": torch.tensor(int(rng.integers(1, 100)), dtype=torch.int64),
    }


def test_weighted_mean_matches_numpy_reference_including_bn_buffers():
    rng = np.random.default_rng(0)
    states = [_state(rng, s) for s in (1.0, 2.0, 3.0)]
    sizes = [10, 30, 60]
    before = [{k: v.clone() for k, v in s.items()} for s in states]
    out = weighted_mean(states, sizes)
    w = np.array(sizes, dtype=np.float64) / sum(sizes)
    for key in ("conv.weight", "bn.running_mean", "bn.running_var"):
        expected = sum(wi * s[key].numpy().astype(np.float64) for wi, s in zip(w, states, strict=True))
        np.testing.assert_allclose(out[key].numpy(), expected, rtol=1e-6, atol=1e-6)
        assert out[key].dtype == torch.float32
    # Integer counters are never averaged as floats: the largest client count, still int64.
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert int(out["bn.num_batches_tracked"]) == max(int(s["bn.num_batches_tracked"]) for s in states)
    for s, b in zip(states, before, strict=True):  # inputs untouched
        assert all(torch.equal(s[k], b[k]) for k in s)


def test_weighting_is_by_size_not_by_count():
    a = {"w": torch.zeros(1)}
    b = {"w": torch.ones(1)}
    assert float(weighted_mean([a, b], [1, 3])["w"]) == pytest.approx(0.75)
    assert float(weighted_mean([a, b], [1, 1])["w"]) == pytest.approx(0.5)


def test_running_fold_equals_one_shot_mean_and_rejects_bad_input():
    acc = WeightedMean()
    with pytest.raises(ValueError, match="no client"):
        acc.result()
    acc.add({"w": torch.ones(2)}, 2)
    with pytest.raises(ValueError, match="different keys"):
        acc.add({"v": torch.ones(2)}, 1)
    with pytest.raises(ValueError, match=">= 0"):
        acc.add({"w": torch.ones(2)}, -1)


def test_fedavg_on_resnet_state_dicts_averages_bn_statistics():
    model = build_model("batch")
    base = model.state_dict()
    clients = []
    for i, n in enumerate((100, 300)):
        state = {k: (v + i if v.is_floating_point() else v + 5 * i) for k, v in base.items()}
        clients.append(ClientResult(i, state, n, {"train_loss": 1.0, "train_acc": 0.5}))
    new = FedAvg().aggregate_fit(FitRound(1, base), iter(clients))
    key = "layer1.0.bn1.running_mean"
    assert torch.allclose(new[key], base[key] + 0.75)
    assert torch.allclose(new["fc.weight"], base["fc.weight"] + 0.75)
    assert new["bn1.num_batches_tracked"].dtype == torch.int64
    assert int(new["bn1.num_batches_tracked"]) == int(base["bn1.num_batches_tracked"]) + 5
    assert list(new) == list(base)
