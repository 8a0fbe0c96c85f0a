"""The one round loop against a fake backend: failures, skipped rounds, progress and resume.

The fake backend trains nothing: client k returns the global weights plus k, and each round
one of its four clients fails. So every aggregate can be computed by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedcifar.client.evaluate import EvalCounts
from fedcifar.config import build_config
from fedcifar.messages import ClientFailure, ClientResult
from fedcifar.server.loop import Server, run_rounds
from fedcifar.strategy.population import Population
from fedcifar.strategy.registry import build_strategy
from fedcifar.track.checkpoint import load_checkpoint
from fedcifar.track.rundir import PROGRESS_FILE, RunDir

SIZES = np.array([10, 20, 30, 40, 50, 60, 70, 80])


class FailingBackend:
    """Client k trains to global + k; the largest-id client of each round fails."""

    workers = 2

    def __init__(self, kind: str = "failure") -> None:
        self.kind = kind
        self.rounds: list[list[int]] = []

    def fit(self, server_round, global_weights, tasks):
        ids = [t.client_id for t in tasks]
        self.rounds.append(ids)
        failing = max(ids)
        for task in reversed(tasks):  # any order: the loop must not depend on it
            cid = task.client_id
            if cid == failing:
                yield ClientFailure(cid, "RuntimeError: disk on fire")
                continue
            weights = {k: v + cid for k, v in global_weights.items()}
            metrics = {"train_loss": float(cid), "train_acc": 0.5, "images": float(SIZES[cid])}
            scaffold = task.instructions.control_server is not None
            extras = {"control_delta": {k: torch.full_like(v, cid) for k, v in weights.items()}} if scaffold else {}
            yield ClientResult(cid, weights, int(SIZES[cid]), metrics, extras=extras)

    def evaluate(self, weights):
        return EvalCounts(2.0, 1, 2, 4, (1, 0), (2, 2))

    def client_losses(self, server_round, weights, client_ids):
        return [float(c) for c in client_ids]


def _federation(tmp_path, backend, **overrides):
    values = {"num_clients": 8, "clients_per_round": 4, "rounds": 3, "seed": 3, **overrides}
    cfg = build_config("paper", None, values)
    population = Population(SIZES, np.eye(8, 2, dtype=np.int64) + 1)
    strategy = build_strategy(cfg)
    strategy.setup(population)
    run, _ = RunDir.open(tmp_path, cfg, {"arch": "fake"}, resume=False)
    return Server(cfg, strategy, backend, population), run


def test_a_round_with_a_failed_client_aggregates_the_others_and_records_why(tmp_path):
    backend = FailingBackend()
    fed, run = _federation(tmp_path, backend, min_fit_clients=3)
    start = {"w": torch.zeros(2)}
    frame = run_rounds(fed, run, start, progress=False)
    expected = 0.0
    for ids in backend.rounds:
        ok = sorted(ids)[:-1]
        expected += sum(c * SIZES[c] for c in ok) / sum(SIZES[c] for c in ok)  # size-weighted mean of +c
    final = load_checkpoint(tmp_path).weights["w"]
    torch.testing.assert_close(final, torch.full((2,), expected, dtype=torch.float32))
    assert frame["clients_failed"].tolist() == [1, 1, 1]
    for row, ids in zip(frame.itertuples(), backend.rounds, strict=True):
        assert row.failures == f"{max(ids)}: RuntimeError: disk on fire"
        assert sorted(map(int, row.clients.split())) == sorted(ids)[:-1]
        assert row.train_images == sum(SIZES[c] for c in sorted(ids)[:-1])
        assert not isinstance(row.skipped, str) or row.skipped == ""
    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert progress == {**progress, "round": 3, "clients_done": 3, "clients_failed": 1, "clients_total": 4}
    assert frame["test_acc"].tolist() == [0.25] * 3


@pytest.mark.parametrize("strategy", ["fedavgm", "scaffold", "fedadam", "krum"])
def test_a_round_below_min_fit_clients_is_skipped_and_keeps_weights_and_strategy_state(tmp_path, strategy):
    fed, run = _federation(tmp_path, FailingBackend(), strategy=strategy, rounds=2)  # min_fit = all 4
    start = {"w": torch.arange(2.0)}
    before = {k: v.clone() for k, v in fed.strategy.state_dict()[0].items()}
    frame = run_rounds(fed, run, start, progress=False)
    assert frame["skipped"].tolist() == ["3 of 4 clients returned, min_fit_clients is 4"] * 2
    assert frame["clients_failed"].tolist() == [1, 1]
    assert torch.equal(load_checkpoint(tmp_path).weights["w"], start["w"])
    after = fed.strategy.state_dict()[0]
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_round_where_every_client_fails_is_skipped_not_a_crash(tmp_path):
    class AllFail(FailingBackend):
        def fit(self, server_round, global_weights, tasks):
            for task in tasks:
                yield ClientFailure(task.client_id, "TimeoutError: no reply")

    fed, run = _federation(tmp_path, AllFail(), min_fit_clients=1, rounds=1)
    frame = run_rounds(fed, run, {"w": torch.ones(2)}, progress=False)
    assert frame["skipped"].tolist() == ["0 of 4 clients returned, min_fit_clients is 1"]
    assert frame["clients_failed"].tolist() == [4]
    assert np.isnan(frame["train_loss"].iloc[0])


def test_a_strategy_error_is_not_mistaken_for_a_short_round(tmp_path):
    class NoState(FailingBackend):  # SCAFFOLD needs its clients' control variate updates
        def fit(self, server_round, global_weights, tasks):
            for task in tasks:
                yield ClientResult(task.client_id, dict(global_weights), 10, {"images": 10.0})

    fed, run = _federation(tmp_path, NoState(), strategy="scaffold", rounds=1)
    with pytest.raises(ValueError, match="no SCAFFOLD control variate"):
        run_rounds(fed, run, {"w": torch.zeros(2)}, progress=False)


def test_resuming_after_round_one_reproduces_the_uninterrupted_run(tmp_path):
    whole_fed, whole_run = _federation(tmp_path / "whole", FailingBackend(), min_fit_clients=3)
    run_rounds(whole_fed, whole_run, {"w": torch.zeros(2)}, progress=False)
    first_fed, first_run = _federation(tmp_path / "cut", FailingBackend(), min_fit_clients=3, rounds=1)
    run_rounds(first_fed, first_run, {"w": torch.zeros(2)}, progress=False)
    cfg = whole_fed.cfg
    run, resumed = RunDir.open(tmp_path / "cut", cfg, {"arch": "fake"}, resume=True)
    strategy = build_strategy(cfg)
    strategy.setup(whole_fed.population)
    strategy.load_state_dict(resumed.strategy_tensors, resumed.strategy_meta)
    fed = Server(cfg, strategy, FailingBackend(), whole_fed.population)
    frame = run_rounds(fed, run, resumed.weights, resumed.round, progress=False)
    assert frame["round"].tolist() == [1, 2, 3]
    assert torch.equal(load_checkpoint(tmp_path / "cut").weights["w"], load_checkpoint(tmp_path / "whole").weights["w"])


class StatisticsPoisoner:
    """Client k sends global + k for its parameter and its running_var; client 0 sends honest
    parameters with its running_var times 1e4 (``attack=bn_stats``)."""

    workers = 1

    def __init__(self) -> None:
        self.clients: list[int] = []

    def fit(self, server_round, global_weights, tasks):
        self.clients = sorted(t.client_id for t in tasks)
        for task in tasks:
            cid = task.client_id
            w = {k: v + cid for k, v in global_weights.items()}
            if cid == min(t.client_id for t in tasks):
                w["bn.running_var"] = w["bn.running_var"] * 1e4
            yield ClientResult(cid, w, int(SIZES[cid]), {"train_loss": 1.0, "train_acc": 0.5, "images": 1.0})

    def evaluate(self, weights):
        return EvalCounts(2.0, 1, 2, 4, (1, 0), (2, 2))

    def client_losses(self, server_round, weights, client_ids):
        return [0.0 for _ in client_ids]


@pytest.mark.parametrize("clip_norm", [0.0, 100.0])
def test_under_clip_norm_the_statistics_take_the_clients_median_whatever_the_strategy(tmp_path, clip_norm):
    backend = StatisticsPoisoner()
    fed, run = _federation(tmp_path, backend, rounds=1, clip_norm=clip_norm)
    start = {"w": torch.zeros(2), "bn.running_var": torch.ones(2)}
    run_rounds(fed, run, start, progress=False)
    var = load_checkpoint(tmp_path).weights["bn.running_var"]
    ids = backend.clients
    honest = [1.0 + c for c in ids[1:]]
    if clip_norm:  # the median of the four clients' values: the poisoner's is the largest
        values = sorted([(1.0 + ids[0]) * 1e4, *honest])
        torch.testing.assert_close(var, torch.full((2,), (values[1] + values[2]) / 2))
    else:  # FedAvg's size-weighted mean, as the paper's: one poisoner dominates it
        assert float(var.min()) > 10 * max(honest)


class InflatingBackend(FailingBackend):
    """Like FailingBackend, but client 1 claims 10⁹ examples for the round."""

    def fit(self, server_round, global_weights, tasks):
        for result in super().fit(server_round, global_weights, tasks):
            if isinstance(result, ClientResult) and result.client_id == 1:
                result.num_examples = 10**9
            yield result


def test_a_result_claiming_more_examples_than_registered_is_refused_not_weighted(tmp_path):
    backend = InflatingBackend()
    fed, run = _federation(tmp_path, backend, min_fit_clients=1)
    frame = run_rounds(fed, run, {"w": torch.zeros(2)}, progress=False)
    expected = 0.0
    for ids in backend.rounds:
        ok = [c for c in sorted(ids)[:-1] if c != 1]
        expected += sum(c * SIZES[c] for c in ok) / sum(SIZES[c] for c in ok)
    torch.testing.assert_close(load_checkpoint(tmp_path).weights["w"], torch.full((2,), expected))
    inflated = [row.failures for row, ids in zip(frame.itertuples(), backend.rounds, strict=True) if 1 in ids[:-1]]
    assert inflated and all("1: reported 1000000000 training examples, 20 are registered" in f for f in inflated)


class ShuffledBackend(FailingBackend):
    """Like FailingBackend, with the round's results and failure in a random order (Flower's arrival)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def fit(self, server_round, global_weights, tasks):
        items = list(super().fit(server_round, global_weights, tasks))
        yield from (items[i] for i in self.rng.permutation(len(items)))


def test_the_strategy_folds_results_in_one_order_whatever_order_they_arrive_in(tmp_path):
    """Largest registered client first: a float32 sum then gives the same bits on both backends."""
    weights = []
    for seed in range(4):
        seen: list[list[int]] = []
        fed, run = _federation(tmp_path / str(seed), ShuffledBackend(seed), min_fit_clients=3)
        fold = fed.strategy.aggregate_fit

        def recording(fit_round, results, fold=fold, seen=seen):
            results = list(results)
            seen.append([r.client_id for r in results])
            return fold(fit_round, iter(results))

        fed.strategy.aggregate_fit = recording
        start = {"w": torch.tensor([0.1, 1e-3, 7.0])}  # sums whose float32 rounding depends on the order
        frame = run_rounds(fed, run, start, progress=False)
        weights.append(load_checkpoint(tmp_path / str(seed)).weights["w"])
        for ids, folded, row in zip(fed.backend.rounds, seen, frame.itertuples(), strict=True):
            order = sorted(sorted(ids)[:-1], key=lambda c: -SIZES[c])
            assert folded == order and row.clients == " ".join(map(str, order))
    assert all(torch.equal(w, weights[0]) for w in weights)
