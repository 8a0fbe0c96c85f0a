"""Secure aggregation without a network: what runs on a sum, what is refused, and the protocol's size.

The protocol itself runs on a real loopback federation in tests/test_flower_secagg.py.
"""

from __future__ import annotations

import pytest
import torch

from fedcifar.config import MEAN_STRATEGIES, ConfigError, build_config
from fedcifar.flower.secagg import QUANTISATION_LEVELS, protocol_size, quantisation_bound
from fedcifar.messages import ClientResult
from fedcifar.sim.engine import run_training
from fedcifar.strategy.base import FitRound, SecureSum
from fedcifar.strategy.registry import STRATEGIES, build_strategy
from helpers import tiny_config

SECURE = dict(secure_aggregation=True, clients_per_round=4, num_clients=8)


def _refusal(**over) -> str:
    with pytest.raises(ConfigError) as err:
        build_config("paper-cpu", None, {**SECURE, **over})
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_that_needs_individual_updates_is_refused_and_the_others_run_on_a_sum(name):
    on_sum = build_strategy(build_config("paper-cpu", None, {"strategy": name})).on_sum
    assert on_sum == (name in MEAN_STRATEGIES)  # the config's list and the classes agree
    if on_sum:
        assert build_config("paper-cpu", None, {**SECURE, "strategy": name}).secure_aggregation
        assert build_strategy(build_config("paper-cpu", None, {"strategy": name, "norm": "fedbn"})).on_sum
    else:
        assert f"strategy={name} needs each client's update" in _refusal(strategy=name)


@pytest.mark.parametrize(
    "over, says",
    [
        (
            dict(client_selection="power_of_choice", client_weighting="uniform"),
            "power_of_choice ranks clients by their individual losses",
        ),
        (dict(clip_norm=1.0), "cannot clip an update it never holds"),
        (dict(dp="client", norm="group", client_weighting="uniform", dp_clip_quantile=0.5), "adaptive clipping"),
        (dict(clients_per_round=2), "one learns the other's update from the sum"),
        (dict(secagg_num_shares=2), "secagg_num_shares must be 0"),
        (dict(secagg_threshold=4), "secagg_threshold must be 0"),
        (dict(secagg_clipping_range=0.0), "secagg_clipping_range must be > 0"),
    ],
)
def test_configurations_the_sum_cannot_serve_are_refused_in_one_line(over, says):
    assert says in _refusal(**over)


def test_the_simulator_refuses_secure_aggregation_in_one_line(tmp_path, cifar):
    cfg = tiny_config(secure_aggregation=True, clients_per_round=3, num_clients=4)
    with pytest.raises(ConfigError, match="runs on Flower's Deployment Engine only"):
        run_training(cfg, tmp_path / "run", cifar, progress=False)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_protocol_size_for_the_paper_round_and_a_small_one():
    cfg = build_config("paper-cpu", None, {"secure_aggregation": True})
    assert protocol_size(cfg, 16) == (1.0, 11)  # every client holds a share; 11 of 16 rebuild a secret
    assert protocol_size(cfg, 3) == (1.0, 2)
    custom = build_config("paper-cpu", None, {"secure_aggregation": True, "secagg_num_shares": 7})
    assert protocol_size(custom, 16) == (7, 5)
    assert quantisation_bound(cfg, [1.0] * 16) == pytest.approx(16 / QUANTISATION_LEVELS)


def _states(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[ClientResult]]:
    g = torch.Generator().manual_seed(seed)
    start = {"w": torch.randn(5, 3, generator=g), "bn.running_var": torch.rand(3, generator=g) + 1}
    start["bn.num_batches_tracked"] = torch.tensor(7)
    results = []
    for c in range(n):
        w = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in start.items() if v.is_floating_point()}
        w["bn.num_batches_tracked"] = torch.tensor(9)
        results.append(ClientResult(c, w, 10 + 5 * c))
    return start, results


def _sum(start, results, factors) -> SecureSum:
    deltas = {
        k: sum(factors[r.client_id] * (r.weights[k] - v) for r in results)
        for k, v in start.items()
        if k != "bn.num_batches_tracked"
    }
    return SecureSum(deltas, sum(factors.values()), len(results))


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_aggregate_sum_equals_aggregate_fit_on_the_same_updates(name):
    start, results = _states(4)
    factors = {r.client_id: float(r.num_examples) for r in results}
    cfg = build_config("paper-cpu", None, {"strategy": name})
    plain, secure = build_strategy(cfg), build_strategy(cfg)
    for _ in range(2):  # twice: the server optimizers' state must advance alike
        a = plain.aggregate_fit(FitRound(1, start, factors), iter(results))
        b = secure.aggregate_sum(FitRound(1, start, factors), _sum(start, results, factors))
        for k in ("w", "bn.running_var"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
        assert int(b["bn.num_batches_tracked"]) == 7  # counters are not summed: the global value stays


def test_client_level_dp_on_a_sum_releases_what_it_would_on_the_updates():
    start, results = _states(3)
    over = dict(dp="client", dp_noise="client", norm="group", client_weighting="uniform", clients_per_round=3)
    cfg = build_config("paper-cpu", None, {**over, "num_clients": 6})
    plain, secure = build_strategy(cfg), build_strategy(cfg)
    ones = {r.client_id: 1.0 for r in results}
    a = plain.aggregate_fit(FitRound(1, start, ones), iter(results))
    b = secure.aggregate_sum(FitRound(1, start, ones), _sum(start, results, ones))
    torch.testing.assert_close(a["w"], b["w"], rtol=1e-5, atol=1e-6)
    assert plain.releases == secure.releases and secure.epsilon() > 0
