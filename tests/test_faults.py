"""Client failures of every kind, injected faults and Byzantine attacks, through the one round loop.

The loop-level tests use a fake backend whose aggregates can be computed by hand; the
end-to-end ones train on real CIFAR-100 at a tiny scale through the local backend.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from fedcifar.client.adversary import InjectedFault, fail_after, fail_before, flip_labels, poison
from fedcifar.client.evaluate import EvalCounts
from fedcifar.config import ConfigError, build_config
from fedcifar.federation import client_instructions, injected_fault, malicious_clients
from fedcifar.messages import ClientResult
from fedcifar.server.loop import Server, run_rounds
from fedcifar.sim.engine import run_training
from fedcifar.sim.executor import LATE, ModelPool
from fedcifar.strategy.population import Population
from fedcifar.strategy.registry import build_strategy
from fedcifar.track.checkpoint import load_checkpoint
from fedcifar.track.rundir import RunDir
from helpers import tiny_config

SIZES = np.array([10, 20, 30, 40])
EVERY_CLIENT = {"clients_per_round": 4, "model": None}  # all 4 clients a round, on the smoke preset's ResNet-18


class ScriptedBackend:
    """Client k returns global + k + 1, unless ``broken`` says what it returns instead."""

    workers = 2

    def __init__(self, broken):
        self.broken = broken  # client id -> function(global weights) -> weights

    def fit(self, server_round, global_weights, tasks):
        for task in tasks:
            cid = task.client_id
            make = self.broken.get(cid, lambda g, c=cid: {k: v + c + 1 for k, v in g.items()})
            yield ClientResult(
                cid, make(global_weights), int(SIZES[cid]), {"images": 1.0, "train_loss": 1.0, "train_acc": 0.5}
            )

    def evaluate(self, weights):
        return EvalCounts(2.0, 1, 2, 4, (1, 0), (2, 2))

    def client_losses(self, server_round, weights, client_ids):
        return [0.0 for _ in client_ids]


def _run(tmp_path, backend, start, **overrides):
    cfg = build_config("paper", None, {"num_clients": 4, "clients_per_round": 4, "rounds": 1, **overrides})
    population = Population(SIZES, np.ones((4, 2), dtype=np.int64))
    strategy = build_strategy(cfg)
    strategy.setup(population)
    run, _ = RunDir.open(tmp_path, cfg, {"arch": "fake"}, resume=False)
    frame = run_rounds(Server(cfg, strategy, backend, population), run, start, progress=False)
    return frame, load_checkpoint(tmp_path).weights


def test_nan_wrong_keys_and_wrong_shapes_are_refused_and_the_rest_aggregated(tmp_path):
    start = {"w": torch.zeros(2), "n": torch.tensor(1)}
    broken = {
        0: lambda g: {"w": torch.tensor([float("nan"), 0.0]), "n": g["n"]},
        1: lambda g: {"w": torch.zeros(2), "n": g["n"], "extra": torch.zeros(1)},
        2: lambda g: {"w": torch.zeros(3), "n": g["n"]},
    }
    frame, weights = _run(tmp_path, ScriptedBackend(broken), start, min_fit_clients=1)
    assert frame["clients_failed"].tolist() == [3]
    reasons = frame["failures"].iloc[0]
    assert "0: non-finite weights in 'w'" in reasons
    assert "1: weights do not match the model (unexpected extra)" in reasons
    assert "2: weights 'w' have shape (3,), the model's is (2,)" in reasons
    torch.testing.assert_close(weights["w"], torch.full((2,), 4.0))  # client 3 alone: 0 + 3 + 1


def test_a_non_finite_aggregate_is_refused_and_the_round_skipped(tmp_path):
    huge = lambda g: {"w": torch.full((2,), 3e38), "n": g["n"]}  # noqa: E731 - finite, but their sum is not
    start = {"w": torch.ones(2), "n": torch.tensor(1)}
    frame, weights = _run(tmp_path, ScriptedBackend({0: huge, 1: huge, 2: huge, 3: huge}), start)
    assert frame["skipped"].tolist() == ["the aggregate has non-finite weights in 'w'"]
    assert torch.equal(weights["w"], start["w"])


def test_clip_norm_bounds_every_update_before_aggregation(tmp_path):
    start = {"w": torch.zeros(4), "n": torch.tensor(1)}
    frame, weights = _run(tmp_path, ScriptedBackend({}), start, clip_norm=1.0)
    # client k sends +(k+1) on 4 entries: norm 2(k+1) > 1, so each becomes +0.5 per entry
    torch.testing.assert_close(weights["w"], torch.full((4,), 0.5))
    assert frame["clipped"].tolist() == [4]
    assert frame["update_norm"].iloc[0] == pytest.approx(np.median([2.0, 4.0, 6.0, 8.0]))


def test_model_pool_map_gives_up_on_tasks_past_the_timeout_and_keeps_the_rest():
    release = threading.Event()

    def slow(model):
        release.wait(10)
        return "slow"

    with ModelPool(lambda: torch.nn.Identity(), workers=2) as pool:
        t0 = time.monotonic()
        out = list(pool.map([lambda m: 1, slow, lambda m: 3, lambda m: 4], timeout=0.5))
        elapsed = time.monotonic() - t0
        release.set()
    assert out == [1, LATE, 3, 4]
    assert elapsed < 5


def test_fault_draws_are_seeded_per_round_and_client_and_near_the_rate():
    cfg = build_config("paper", None, {"fault_rate": 0.25, "fault_kind": "nan"})
    draws = [injected_fault(cfg, r, c) for r in range(1, 51) for c in range(64)]
    assert draws == [injected_fault(cfg, r, c) for r in range(1, 51) for c in range(64)]
    assert set(draws) == {"", "nan"}
    assert 0.22 < draws.count("nan") / len(draws) < 0.28
    assert injected_fault(cfg.replace(fault_rate=0.0), 1, 1) == ""


def test_the_malicious_set_is_fixed_by_the_seed_and_told_to_those_clients_only():
    cfg = build_config("paper", None, {"attack": "sign_flip", "attack_fraction": 0.25, "attack_scale": 2})
    bad = malicious_clients(cfg)
    assert len(bad) == 16 and bad == malicious_clients(cfg) and bad != malicious_clients(cfg.replace(seed=1))
    assert malicious_clients(cfg.replace(attack="none")) == frozenset()
    for cid in range(64):
        ins = client_instructions(cfg, 3, cid, {})
        assert (ins.attack, ins.attack_scale) == (("sign_flip", 2.0) if cid in bad else ("none", 2.0))


def test_model_attacks_poison_trained_parameters_only():
    g = torch.Generator().manual_seed(0)
    w0 = {"conv.weight": torch.zeros(1000), "bn.running_var": torch.ones(3), "bn.num_batches_tracked": torch.tensor(2)}
    w = {
        "conv.weight": torch.full((1000,), 0.1),
        "bn.running_var": torch.full((3,), 2.0),
        **{"bn.num_batches_tracked": torch.tensor(3)},
    }
    flipped = poison(w0, w, "sign_flip", 0.0, g)
    torch.testing.assert_close(flipped["conv.weight"], torch.full((1000,), -0.4))  # default strength 4
    assert (
        flipped["bn.running_var"] is w["bn.running_var"]
        and flipped["bn.num_batches_tracked"] is w["bn.num_batches_tracked"]
    )
    torch.testing.assert_close(poison(w0, w, "scale", 3.0, g)["conv.weight"], torch.full((1000,), 0.3))
    noise = poison(w0, w, "gaussian", 0.0, g)["conv.weight"]
    assert noise.std().item() == pytest.approx(1.0, rel=0.1) and abs(noise.mean().item()) < 0.1  # 10 x rms 0.1
    assert torch.equal(flip_labels(torch.tensor([0, 1, 99]), 100), torch.tensor([99, 98, 0]))


def test_injected_faults_raise_hang_until_cancelled_or_corrupt_the_result():
    with pytest.raises(InjectedFault, match="fault_kind=raise"):
        fail_before("raise", None)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(InjectedFault, match="hang released"):
        fail_before("hang", cancel)
    out = fail_after("nan", {"w": torch.ones(2), "n": torch.tensor(1)})
    assert torch.isnan(out["w"]).all() and int(out["n"]) == 1
    fail_before("", None)


def test_config_refuses_a_hang_without_a_round_timeout_and_out_of_range_rates():
    with pytest.raises(ConfigError, match="fault_kind=hang needs round_timeout"):
        build_config("paper", None, {"fault_rate": 0.1, "fault_kind": "hang"})
    with pytest.raises(ConfigError, match="fault_rate must be in"):
        build_config("paper", None, {"fault_rate": 1.5})
    with pytest.raises(ConfigError, match="attack_fraction must be in"):
        build_config("paper", None, {"attack_fraction": -0.1})
    with pytest.raises(ConfigError, match="bulyan needs clients_per_round >= 4"):
        build_config("paper", None, {"strategy": "bulyan", "krum_byzantine": 4})


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("raise", "InjectedFault: injected fault (fault_kind=raise)"),
        ("nan", "non-finite weights in"),
        ("hang", "no result within round_timeout=8s"),
    ],
)
def test_injected_faults_on_real_data_are_recorded_and_the_run_goes_on(tmp_path, cifar, kind, reason):
    over = {"fault_rate": 0.5, "fault_kind": kind, "round_timeout": 8, "min_fit_clients": 1}
    cfg = tiny_config(**EVERY_CLIENT, **over)
    frame = run_training(cfg, tmp_path, cifar, progress=False)
    assert frame["round"].tolist() == [1, 2]
    expected = [sum(bool(injected_fault(cfg, r, c)) for c in range(4)) for r in (1, 2)]
    assert frame["clients_failed"].tolist() == expected and sum(expected) > 0
    failures = "; ".join(f for f in frame["failures"] if isinstance(f, str))
    assert failures.count(reason) == sum(expected)
    weights = load_checkpoint(tmp_path).weights
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_attackers_are_recorded_per_round_and_label_flip_runs_end_to_end(tmp_path, cifar):
    cfg = tiny_config(**EVERY_CLIENT, attack="label_flip", attack_fraction=0.5)
    frame = run_training(cfg, tmp_path, cifar, progress=False)
    bad = malicious_clients(cfg)
    assert len(bad) == 2
    for row in frame.itertuples():
        assert sorted(map(int, str(row.malicious).split())) == sorted(bad)  # every client trains each round
