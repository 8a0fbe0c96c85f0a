"""Server update rules against hand-computed numpy references on tiny tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedcifar.config import build_config
from fedcifar.messages import CONTROL_DELTA, ClientResult
from fedcifar.model.resnet import build_model
from fedcifar.model.spec import batchnorm_keys
from fedcifar.strategy.aggregate import apply_update, pseudo_gradient
from fedcifar.strategy.base import FitRound
from fedcifar.strategy.fedavg import FedAvg
from fedcifar.strategy.fedbn import FedBN
from fedcifar.strategy.feddyn import FedDyn
from fedcifar.strategy.fedexp import FedExP
from fedcifar.strategy.fedopt import FedAdam, FedAvgM, adaptive_step
from fedcifar.strategy.fedprox import FedProx
from fedcifar.strategy.population import Population, label_discrepancy
from fedcifar.strategy.registry import STRATEGIES, build_strategy
from fedcifar.strategy.robust import (
    Krum,
    Median,
    TrimmedMean,
    coordinate_median,
    krum_select,
    pairwise_sq_distances,
    trimmed_mean,
)
from fedcifar.strategy.scaffold import Scaffold
from fedcifar.strategy.weighting import Weighting, feddisco_factors
from fedcifar.track.checkpoint import load_checkpoint, save_checkpoint

KEYS = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def _global(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(3, generator=g) for k in KEYS}
    out["bn.running_var"] = out["bn.running_var"].abs() + 0.5
    out["bn.num_batches_tracked"] = torch.tensor(7)
    return out


def _client(global_weights, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        k: v + scale * torch.randn(v.shape, generator=g)
        for k, v in sorted(global_weights.items())
        if v.is_floating_point()
    }
    out["bn.num_batches_tracked"] = global_weights["bn.num_batches_tracked"] + seed % 5
    return {k: out[k] for k in global_weights}


def _results(global_weights, sizes, seed=0):
    return [ClientResult(i, _client(global_weights, seed + i), n, {}) for i, n in enumerate(sizes)]


def aggregate(strategy, server_round, global_weights, results):
    """What the round loop does: the round's factors from the strategy's weighting, then fold."""
    results = list(results)
    factors = strategy.weighting.for_round([r.client_id for r in results], strategy.population)
    return strategy.aggregate_fit(FitRound(server_round, global_weights, factors), iter(results))


def _np(t):
    return t.double().numpy()


# --- pseudo-gradient and server optimizers -------------------------------------------------


def test_pseudo_gradient_covers_parameters_only_and_statistics_take_the_mean():
    x, mean = _global(0), _client(_global(0), 1)
    before = {k: v.clone() for k, v in x.items()}
    delta = pseudo_gradient(x, mean)
    assert set(delta) == {"conv.weight", "bn.weight", "bn.bias"}
    np.testing.assert_allclose(_np(delta["conv.weight"]), _np(mean["conv.weight"]) - _np(x["conv.weight"]), atol=1e-7)
    out = apply_update(x, mean, {k: torch.zeros_like(v) for k, v in delta.items()})
    assert torch.equal(out["conv.weight"], x["conv.weight"])  # zero update keeps x
    assert torch.equal(out["bn.running_var"], mean["bn.running_var"])  # statistics: the mean
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert all(torch.equal(x[k], before[k]) for k in x)  # inputs untouched


def test_fedavgm_without_momentum_and_unit_lr_is_fedavg():
    x = _global()
    results = _results(x, [10, 30, 60])
    plain = aggregate(FedAvg(), 1, x, results)
    momentum = aggregate(FedAvgM(server_lr=1.0, momentum=0.0), 1, x, results)
    for k in x:
        torch.testing.assert_close(momentum[k], plain[k], rtol=0, atol=1e-6)


def test_fedavgm_matches_numpy_over_three_rounds():
    lr, beta = 0.7, 0.9
    strategy = FedAvgM(server_lr=lr, momentum=beta)
    x = _global()
    x_np = _np(x["conv.weight"])
    v_np = np.zeros_like(x_np)
    for rnd in range(1, 4):
        results = _results(x, [5, 15], seed=10 * rnd)
        w = np.array([5, 15]) / 20
        mean = sum(wi * _np(r.weights["conv.weight"]) for wi, r in zip(w, results, strict=True))
        delta = mean - x_np
        v_np = beta * v_np + delta
        x_np = x_np + lr * v_np
        x = aggregate(strategy, rnd, x, results)
        np.testing.assert_allclose(_np(x["conv.weight"]), x_np, rtol=1e-5, atol=1e-6)


def test_fedadam_first_step_matches_the_closed_form():
    lr, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    x = _global()
    results = _results(x, [20, 20])
    new = aggregate(FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau), 1, x, results)
    d = (_np(results[0].weights["conv.weight"]) + _np(results[1].weights["conv.weight"])) / 2 - _np(x["conv.weight"])
    # m1 = (1-b1) d, v1 = b2 tau^2 + (1-b2) d^2 (v starts at tau^2, Reddi et al. Alg. 2)
    expected = _np(x["conv.weight"]) + lr * (1 - b1) * d / (np.sqrt(b2 * tau**2 + (1 - b2) * d**2) + tau)
    np.testing.assert_allclose(_np(new["conv.weight"]), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        new["bn.running_mean"], (results[0].weights["bn.running_mean"] + results[1].weights["bn.running_mean"]) / 2
    )


@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad"])
def test_adaptive_rules_match_numpy_for_three_steps(rule):
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-2
    rng = np.random.default_rng(1)
    deltas = [rng.normal(size=4) * s for s in (0.5, 0.01, 0.2)]
    m = v = None
    m_np, v_np = np.zeros(4), np.full(4, tau**2)
    for d in deltas:
        update, m, v = adaptive_step(rule, torch.tensor(d, dtype=torch.float64), m, v, lr, b1, b2, tau)
        m_np = b1 * m_np + (1 - b1) * d
        if rule == "adam":
            v_np = b2 * v_np + (1 - b2) * d**2
        elif rule == "yogi":
            v_np = v_np - (1 - b2) * d**2 * np.sign(v_np - d**2)
        else:
            v_np = v_np + d**2
        np.testing.assert_allclose(update.numpy(), lr * m_np / (np.sqrt(v_np) + tau), rtol=1e-12)
        np.testing.assert_allclose(v.numpy(), v_np, rtol=1e-12)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers_step_parameters_only_and_take_the_statistics_weighted_mean(name):
    """A large server step moves the parameters away from the clients' mean, never the statistics."""
    strategy = build_strategy(build_config("paper", None, {"strategy": name, "server_lr": 10.0}))
    x = _global()
    for rnd in range(1, 4):
        results = _results(x, [1, 3], seed=rnd)
        w = np.array([1, 3]) / 4
        x = aggregate(strategy, rnd, x, results)
        for k in ("bn.running_mean", "bn.running_var"):
            mean = sum(wi * _np(r.weights[k]) for wi, r in zip(w, results, strict=True))
            np.testing.assert_allclose(_np(x[k]), mean, rtol=1e-5, atol=1e-6, err_msg=k)
        mean = sum(wi * _np(r.weights["conv.weight"]) for wi, r in zip(w, results, strict=True))
        assert np.abs(_np(x["conv.weight"]) - mean).max() > 0.1  # the step went beyond the mean
        assert x["bn.num_batches_tracked"].dtype == torch.int64


# --- FedProx ---------------------------------------------------------------------------------


def test_fedprox_asks_clients_for_mu_and_aggregates_like_fedavg():
    x = _global()
    results = _results(x, [3, 9])
    strategy = FedProx(proximal_mu=0.0)
    assert strategy.configure_fit(1, [4, 2]) == {4: {"proximal_mu": 0.0}, 2: {"proximal_mu": 0.0}}
    prox = aggregate(strategy, 1, x, results)
    plain = aggregate(FedAvg(), 1, x, results)
    assert all(torch.equal(prox[k], plain[k]) for k in x)
    assert FedProx(0.3).configure_fit(1, [0])[0]["proximal_mu"] == 0.3


# --- SCAFFOLD (server side; the client side is in test_strategies_client.py) ---------------


def _scaffold_results(strategy, x, client_ids, seed, c_i):
    """Each client draws its c_i+ and sends Δc_i against its own ``c_i`` (numpy, updated here)."""
    config = strategy.configure_fit(seed, client_ids)
    results = []
    for cid in client_ids:
        g = torch.Generator().manual_seed(seed * 100 + cid)
        c_new = {k: torch.randn(3, generator=g) for k in ("conv.weight", "bn.weight", "bn.bias")}
        delta = {k: t - torch.as_tensor(c_i[cid][k], dtype=torch.float32) for k, t in c_new.items()}
        c_i[cid] = {k: _np(t) for k, t in c_new.items()}
        results.append(
            ClientResult(cid, _client(x, seed * 100 + cid), 10 * (cid + 1), {}, extras={CONTROL_DELTA: delta})
        )
    return config, results


def test_scaffold_updates_c_from_the_clients_deltas_and_keeps_c_the_mean_of_all_c_i():
    n_clients, lr_g = 5, 0.5
    strategy = Scaffold(num_clients=n_clients, server_lr=lr_g)
    x = _global()
    names = ("conv.weight", "bn.weight", "bn.bias")
    c_i = {cid: {k: np.zeros(3) for k in names} for cid in range(n_clients)}  # what the clients keep
    c_np = np.zeros(3)
    for rnd, ids in enumerate(([0, 2], [2, 3], [0, 4]), start=1):
        before = {cid: dict(c_i[cid]) for cid in ids}
        config, results = _scaffold_results(strategy, x, ids, rnd, c_i)
        for cid in ids:  # the server sends c as it stood before the round, and nothing per client
            assert set(config[cid]) == {"control_server"}
            c = config[cid]["control_server"]
            np.testing.assert_allclose(_np(c.get("conv.weight", torch.zeros(3))), c_np, atol=1e-6)
        sizes = np.array([r.num_examples for r in results], dtype=float)
        mean = sum(s * _np(r.weights["conv.weight"]) for s, r in zip(sizes / sizes.sum(), results, strict=True))
        x_np = _np(x["conv.weight"]) + lr_g * (mean - _np(x["conv.weight"]))
        delta_c = sum(c_i[cid]["conv.weight"] - before[cid]["conv.weight"] for cid in ids)
        c_np = c_np + delta_c / n_clients
        x = aggregate(strategy, rnd, x, results)
        np.testing.assert_allclose(_np(x["conv.weight"]), x_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(strategy.c["conv.weight"]), c_np, atol=1e-6)
        np.testing.assert_allclose(c_np, np.mean([c_i[k]["conv.weight"] for k in range(n_clients)], axis=0), atol=1e-6)
    assert "bn.running_mean" not in strategy.c  # control variates cover trained parameters only
    tensors, _ = strategy.state_dict()
    assert set(tensors) == {f"c.{k}" for k in names}  # the server holds c alone, no c_i


def test_scaffold_refuses_a_client_without_a_control_variate_update():
    strategy = Scaffold(num_clients=2, server_lr=1.0)
    strategy.configure_fit(1, [0])
    with pytest.raises(ValueError, match="no SCAFFOLD control variate update"):
        aggregate(strategy, 1, _global(), _results(_global(), [4]))


# --- robust aggregation ----------------------------------------------------------------------


def _planted(n_honest: int = 6, n_bad: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    honest = rng.normal(1.0, 0.05, size=(n_honest, 4))
    bad = rng.normal(100.0, 1.0, size=(n_bad, 4))
    return np.concatenate([honest, bad]), honest


def test_median_and_trimmed_mean_match_numpy_and_reject_planted_outliers():
    values, honest = _planted()
    stack = torch.tensor(values)
    np.testing.assert_allclose(coordinate_median(stack).numpy(), np.median(values, axis=0), rtol=1e-12)
    np.testing.assert_allclose(coordinate_median(stack[:7]).numpy(), np.median(values[:7], axis=0), rtol=1e-12)
    ordered = np.sort(values, axis=0)
    np.testing.assert_allclose(trimmed_mean(stack, 0.25).numpy(), ordered[2:6].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(trimmed_mean(stack, 0.0).numpy(), values.mean(axis=0), rtol=1e-12)
    for robust in (coordinate_median(stack), trimmed_mean(stack, 0.25)):
        assert np.abs(robust.numpy() - 1.0).max() < 0.2  # the plain mean is about 25.7
    assert values.mean() > 20


def test_krum_and_multikrum_select_honest_clients():
    values, _ = _planted(6, 2)
    states = [{"w": torch.tensor(v, dtype=torch.float32)} for v in values]
    dist = pairwise_sq_distances(states)
    ref = ((values[:, None, :] - values[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(dist.numpy(), ref, rtol=1e-4, atol=1e-6)
    # Krum score by hand: sum of the n - f - 2 = 4 smallest distances to the others.
    masked = ref + np.diag(np.full(8, np.inf))
    scores = np.sort(masked, axis=1)[:, :4].sum(1)
    assert krum_select(dist, byzantine=2, keep=1) == [int(np.argmin(scores))]
    assert krum_select(dist, byzantine=2, keep=6) == list(range(6))


@pytest.mark.parametrize("strategy", [Median(), TrimmedMean(0.25), Krum(2, 1), Krum(2, 6)])
def test_robust_strategies_reject_a_planted_attacker_in_state_dicts(strategy):
    x = _global()
    results = _results(x, [10] * 7, seed=3)
    attacker = {k: (v + 1e3 if v.is_floating_point() else v) for k, v in results[0].weights.items()}
    results.append(ClientResult(99, attacker, 10, {}))
    out = aggregate(strategy, 1, x, results)
    for k in KEYS:
        assert (out[k] - x[k]).abs().max() < 1.0, k  # within the honest spread (0.1 noise)
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert list(out) == list(x)


# --- weighting -------------------------------------------------------------------------------


def test_label_discrepancy_and_feddisco_factors_by_hand():
    counts = np.array([[5, 5, 0, 0], [10, 0, 0, 0], [1, 1, 1, 1]])
    d = label_discrepancy(counts)
    np.testing.assert_allclose(d, [np.sqrt(4 * 0.25**2), np.sqrt(0.75**2 + 3 * 0.25**2), 0.0])
    sizes = np.array([6, 6, 12])
    raw = np.maximum(sizes / 24 - 0.5 * d + 0.1, 0)
    np.testing.assert_allclose(feddisco_factors(sizes, d, 0.5, 0.1), raw / raw.sum())
    assert feddisco_factors(sizes, d, 0.5, 0.1)[1] == 0  # a one-class client is clipped out
    assert feddisco_factors(sizes, d, 0.5, 0.1)[2] > 12 / 24  # the balanced client counts more than its size


def test_weightings_change_the_mean_as_documented():
    labels = np.repeat(np.arange(4), 10)
    partition = [np.arange(0, 20), np.arange(20, 40)]  # client 0: classes 0-1, client 1: classes 2-3
    population = Population.from_partition(labels, partition, num_classes=4)
    assert population.sizes.tolist() == [20, 20]
    a = {"w": torch.zeros(1)}
    b = {"w": torch.ones(1)}
    results = [ClientResult(0, a, 30, {}), ClientResult(1, b, 10, {})]
    for kind, expected in (("num_examples", 0.25), ("uniform", 0.5), ("feddisco", 0.5)):
        strategy = FedAvg(Weighting(kind))
        strategy.setup(population)
        out = aggregate(strategy, 1, {"w": torch.zeros(1)}, results)
        assert float(out["w"]) == pytest.approx(expected), kind


# --- FedBN -----------------------------------------------------------------------------------


def test_batchnorm_keys_of_resnet_are_exactly_its_bn_layers():
    model = build_model("batch")
    keys = batchnorm_keys(model.state_dict())
    expected = [
        f"{name}.{entry}"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.BatchNorm2d)
        for entry in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
    assert sorted(keys) == sorted(expected) and len(keys) == 5 * 20
    assert batchnorm_keys(build_model("group").state_dict()) == []


def test_fedbn_tells_every_client_to_keep_its_bn_layers_and_aggregates_through_the_inner_strategy():
    strategy = FedBN(FedProx(0.25))
    x = _global()
    config = strategy.configure_fit(1, [0, 1])
    assert config == {0: {"proximal_mu": 0.25, "local_bn": True}, 1: {"proximal_mu": 0.25, "local_bn": True}}
    results = _results(x, [10, 30])
    new = aggregate(strategy, 1, x, results)
    plain = aggregate(FedAvg(), 1, x, results)
    assert all(torch.equal(new[k], plain[k]) for k in x)  # the global model: the inner aggregate, BN included
    assert strategy.state_dict() == ({}, {})  # no client's layers on the server


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "scaffold", "feddyn", "fedexp"])
def test_under_fedbn_server_steps_leave_the_local_bn_layers_out(name):
    """No client trained FedBN's layers from the global values, so they take the inner mean and
    never enter a server step or the server's state (Adam at lr 10 would move them far)."""
    extra = {"server_lr": 10.0, "server_momentum": 0.9, "feddyn_alpha": 0.5, "client_weighting": "uniform"}
    strategy = build_strategy(build_config("paper", None, {"strategy": name, "norm": "fedbn", **extra}))
    strategy.setup(Population(np.full(4, 10), np.eye(4, dtype=np.int64) * 10))
    x = _global()
    for rnd in range(1, 4):
        strategy.configure_fit(rnd, [0, 1, 2, 3])
        results = _results(x, [10] * 4, seed=rnd)  # four clients apart: FedExP's step exceeds 1
        if name == "scaffold":  # what a FedBN client sends: no control variate for its own layers
            for r in results:
                r.extras[CONTROL_DELTA] = {"conv.weight": torch.ones(3)}
        x = aggregate(strategy, rnd, x, results)
        for k in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            mean = np.mean([_np(r.weights[k]) for r in results], axis=0)
            np.testing.assert_allclose(_np(x[k]), mean, rtol=1e-5, atol=1e-6, err_msg=f"{name} {k} round {rnd}")
        mean = np.mean([_np(r.weights["conv.weight"]) for r in results], axis=0)
        assert np.abs(_np(x["conv.weight"]) - mean).max() > 1e-3, name  # the trained layer did get the step
    tensors, _ = strategy.state_dict()
    assert bool(tensors) == (name != "fedexp") and not [k for k in tensors if "bn." in k], sorted(tensors)


# --- every strategy survives a checkpoint round-trip ------------------------------------------


def _fake_round(strategy, server_round, x):
    ids = sorted({server_round % 4, (server_round + 1) % 4, (server_round + 2) % 4})
    config = strategy.configure_fit(server_round, ids)
    results = []
    for cid in ids:
        weights = _client(x, 1000 * server_round + cid)
        extras = {}
        if "control_server" in config.get(cid, {}):
            g = torch.Generator().manual_seed(server_round * 7 + cid)
            extras[CONTROL_DELTA] = {k: torch.randn(3, generator=g) for k in ("conv.weight", "bn.weight", "bn.bias")}
        results.append(ClientResult(cid, weights, 10 + cid, {}, extras=extras))
    new = aggregate(strategy, server_round, x, results)
    return new, config


def _same_config(a, b):
    assert a.keys() == b.keys()
    for cid in a:
        assert a[cid].keys() == b[cid].keys()
        for key, va in a[cid].items():
            vb = b[cid][key]
            if isinstance(va, dict):
                assert va.keys() == vb.keys() and all(torch.equal(va[k], vb[k]) for k in va), key
            else:
                assert va == vb, key


def _strategy(name, norm):
    cfg = build_config(
        "paper", None, {"strategy": name, "norm": norm, "num_clients": 4, "clients_per_round": 3, "server_lr": 0.5}
    )
    strategy = build_strategy(cfg)
    strategy.setup(Population(np.array([10, 11, 12, 13]), np.eye(4, dtype=np.int64) * 10 + 1))
    return strategy


@pytest.mark.parametrize("norm", ["batch", "fedbn"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_skipped_round_leaves_every_strategy_as_it_was(name, norm):
    """The loop skips a round by restoring the state_dict it took before: nothing may change it in place."""
    strategy = _strategy(name, norm)
    x = _global()
    x, _ = _fake_round(strategy, 1, x)
    before = strategy.state_dict()
    copy = {k: v.clone() for k, v in before[0].items()}, json.loads(json.dumps(before[1]))
    _fake_round(strategy, 2, x)
    assert all(torch.equal(before[0][k], copy[0][k]) for k in copy[0]), "state tensors were changed in place"
    strategy.load_state_dict(*before)
    after = strategy.state_dict()
    assert after[0].keys() == copy[0].keys() and all(torch.equal(after[0][k], copy[0][k]) for k in copy[0])
    assert after[1] == copy[1]
    twin = _strategy(name, norm)
    twin.load_state_dict(*copy)
    a, _ = _fake_round(strategy, 3, x)
    b, _ = _fake_round(twin, 3, x)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("norm", ["batch", "fedbn"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_survives_a_checkpoint_round_trip(tmp_path, name, norm):
    cfg = build_config(
        "paper", None, {"strategy": name, "norm": norm, "num_clients": 4, "clients_per_round": 3, "server_lr": 0.5}
    )
    population = Population(np.array([10, 11, 12, 13]), np.eye(4, dtype=np.int64) * 10 + 1)

    def make():
        strategy = build_strategy(cfg)
        strategy.setup(population)
        return strategy

    first = make()
    x = _global()
    for rnd in (1, 2):
        x, _ = _fake_round(first, rnd, x)
    tensors, meta = first.state_dict()
    save_checkpoint(tmp_path, 2, x, tensors, {"strategy": meta, "config": cfg.to_dict()})
    ckpt = load_checkpoint(tmp_path)
    resumed = make()
    resumed.load_state_dict(ckpt.strategy_tensors, json.loads(json.dumps(ckpt.meta["strategy"])))
    again, _ = resumed.state_dict()
    assert again.keys() == tensors.keys() and all(torch.equal(again[k].cpu(), tensors[k].cpu()) for k in tensors)
    a, config_a = _fake_round(first, 3, x)
    b, config_b = _fake_round(resumed, 3, {k: ckpt.weights[k] for k in x})
    _same_config(config_a, config_b)
    assert all(torch.equal(a[k], b[k]) for k in a), name


# --- FedDyn and FedExP (server side) ---------------------------------------------------------


def test_feddyn_server_follows_algorithm_one_over_three_rounds():
    """h <- h - α (1/m) Σ_P (w_k - w); w <- mean_P(w_k) - h/α, unweighted, written out in numpy."""
    m, alpha = 6, 0.1
    strategy = FedDyn(num_clients=m, alpha=alpha)
    x = _global()
    h = np.zeros(3)
    for rnd, sizes in enumerate(([5, 50], [10, 20, 30], [7]), start=1):
        config = strategy.configure_fit(rnd, list(range(len(sizes))))
        assert all(c == {"feddyn_alpha": alpha} for c in config.values())
        results = _results(x, sizes, seed=rnd)
        ws = np.stack([_np(r.weights["conv.weight"]) for r in results])
        w = _np(x["conv.weight"])
        h = h - alpha * (ws - w).sum(0) / m
        expected = ws.mean(0) - h / alpha
        stats = np.stack([_np(r.weights["bn.running_mean"]) for r in results]).mean(0)
        x = aggregate(strategy, rnd, x, results)
        np.testing.assert_allclose(_np(x["conv.weight"]), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(x["bn.running_mean"]), stats, rtol=1e-5, atol=1e-6)  # unweighted mean
        np.testing.assert_allclose(_np(strategy.h["conv.weight"]), h, rtol=1e-5, atol=1e-7)
    assert "bn.running_mean" not in strategy.h
    restored = FedDyn(num_clients=m, alpha=alpha)
    restored.load_state_dict(*strategy.state_dict())
    assert all(torch.equal(restored.h[k], strategy.h[k]) for k in strategy.h)


def test_fedexp_step_size_follows_the_paper_and_is_recorded():
    """η_g = max(1, Σ p_i ||Δ_i||² / (2 (||Δ̄||² + ε))), with Δ over trained parameters only."""
    eps = 1e-3
    x = _global()
    params = ("conv.weight", "bn.weight", "bn.bias")
    for sizes, spread in (([1, 1, 1, 1], 0.5), ([1, 1], 0.0)):
        results = _results(x, sizes, seed=3)
        if spread == 0.0:  # clients that agree: the ratio is 1/2, so FedAvg's step
            results = [ClientResult(i, dict(results[0].weights), 1, {}) for i in range(len(sizes))]
        strategy = FedExP(epsilon=eps, weighting=Weighting("uniform"))
        deltas = np.stack([np.concatenate([_np(r.weights[k]) - _np(x[k]) for k in params]) for r in results])
        mean = deltas.mean(0)
        step = max(1.0, (deltas**2).sum() / (2 * len(results) * ((mean**2).sum() + eps)))
        fit = FitRound(1, x, {r.client_id: 1.0 for r in results})
        out = strategy.aggregate_fit(fit, iter(results))
        assert fit.metrics["server_step"] == pytest.approx(step, rel=1e-6)
        assert (step > 1.5) == (spread > 0)  # disagreeing clients extrapolate, agreeing ones do not
        flat = np.concatenate([_np(out[k]) - _np(x[k]) for k in params])
        np.testing.assert_allclose(flat, step * mean, rtol=1e-5, atol=1e-6)
        stats = np.stack([_np(r.weights["bn.running_var"]) for r in results]).mean(0)
        np.testing.assert_allclose(_np(out["bn.running_var"]), stats, rtol=1e-6)  # statistics: the mean
    assert step == 1.0 and fit.metrics["server_step"] == 1.0
