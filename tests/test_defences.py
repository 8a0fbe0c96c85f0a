"""Bulyan, the geometric median (RFA) and update-norm clipping, each against a numpy reference.

Distances and norms are measured over trained parameters (``conv.weight`` here); BatchNorm
statistics (``bn.running_mean``) are aggregated but never measured.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcifar.client.adversary import poison
from fedcifar.messages import ClientResult
from fedcifar.server.checks import clip_update, update_norm
from fedcifar.strategy.base import FitRound
from fedcifar.strategy.robust import (
    Bulyan,
    GeometricMedian,
    Krum,
    Median,
    TrimmedMean,
    krum_select,
    pairwise_sq_distances,
)

TRAINED = ("conv.weight",)
EVERY_FLOAT = ("conv.weight", "bn.running_mean")


def _clients(k: int, seed: int, outliers: int = 0) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    states = []
    for i in range(k):
        shift = 50.0 if i < outliers else 0.0
        states.append(
            {
                "conv.weight": torch.tensor(rng.normal(shift, 1.0, (3, 2)), dtype=torch.float32),
                "bn.running_mean": torch.tensor(rng.normal(shift, 1.0, 4), dtype=torch.float32),
                "bn.num_batches_tracked": torch.tensor(int(rng.integers(0, 9))),
            }
        )
    return states


def _flat(state, keys=EVERY_FLOAT) -> np.ndarray:
    return np.concatenate([state[k].double().numpy().ravel() for k in keys])


def _stacked(states, keys=EVERY_FLOAT) -> np.ndarray:
    return np.stack([_flat(s, keys) for s in states])


def _unflat(vec: np.ndarray) -> dict[str, np.ndarray]:
    return {"conv.weight": vec[:6].reshape(3, 2), "bn.running_mean": vec[6:]}


def _aggregate(strategy, states, sizes):
    results = [ClientResult(i, s, n) for i, (s, n) in enumerate(zip(states, sizes, strict=True))]
    return strategy.aggregate_fit(FitRound(1, states[0]), iter(results))


# --- numpy references, written from the papers ---


def np_krum_pick(x: np.ndarray, f: int) -> int:
    k = len(x)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    m = min(max(1, k - f - 2), k - 1)
    scores = [np.sort(np.delete(d[i], i))[:m].sum() for i in range(k)]
    return int(np.argmin(scores))


def np_bulyan(measured: np.ndarray, x: np.ndarray, f: int) -> np.ndarray:
    """Krum picks on ``measured`` (the trained parameters), then the per-coordinate rule on ``x``."""
    remaining = list(range(len(x)))
    chosen = []
    while len(chosen) < len(x) - 2 * f:
        chosen.append(remaining.pop(np_krum_pick(measured[remaining], f)))
    sel = x[sorted(chosen)]
    beta = len(sel) - 2 * f
    med = np.median(sel, axis=0)
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        nearest = np.argsort(np.abs(sel[:, j] - med[j]), kind="stable")[:beta]
        out[j] = sel[nearest, j].mean()
    return out


def np_median_statistics(states) -> np.ndarray:
    """Every robust rule's statistics: the coordinate-wise median over all the round's clients."""
    return np.median(np.stack([s["bn.running_mean"].double().numpy() for s in states]), axis=0)


def np_weiszfeld(x: np.ndarray, alpha: np.ndarray, iters: int, nu: float = 1e-6) -> np.ndarray:
    """The weights (summing to 1) of the points in their geometric median."""
    alpha = alpha / alpha.sum()
    beta = alpha
    z = alpha @ x
    obj = (alpha * np.linalg.norm(x - z, axis=1)).sum()
    for _ in range(iters):
        beta = alpha / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z = beta @ x / beta.sum()
        new = (alpha * np.linalg.norm(x - z, axis=1)).sum()
        if abs(obj - new) <= 1e-6 * new:
            break
        obj = new
    return beta / beta.sum()


@pytest.mark.parametrize(("k", "f", "outliers"), [(7, 1, 1), (11, 2, 2), (16, 3, 3), (5, 0, 0)])
def test_bulyan_matches_the_numpy_reference_and_discards_outliers(k, f, outliers):
    states = _clients(k, seed=k, outliers=outliers)
    got = _aggregate(Bulyan(f), states, [10] * k)
    want = _unflat(np_bulyan(_stacked(states, TRAINED), _stacked(states), f))
    want["bn.running_mean"] = np_median_statistics(states)
    for key, ref in want.items():
        np.testing.assert_allclose(got[key].numpy(), ref, rtol=1e-5, atol=1e-5)
        assert np.abs(got[key].numpy()).max() < 10  # the shifted clients (mean 50) had no say
    counter = got["bn.num_batches_tracked"]  # the largest among the chosen clients, still an integer
    assert counter.dtype == torch.int64 and int(counter) in {int(s["bn.num_batches_tracked"]) for s in states}


def test_bulyan_with_too_few_results_assumes_the_largest_f_it_can():
    states = _clients(7, seed=1, outliers=1)
    got = _aggregate(Bulyan(byzantine=3), states, [1] * 7)  # 7 < 4*3+3: f falls to 1
    want = _unflat(np_bulyan(_stacked(states, TRAINED), _stacked(states), 1))
    np.testing.assert_allclose(got["conv.weight"].numpy(), want["conv.weight"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("outliers", [0, 3])
def test_geometric_median_matches_the_numpy_weiszfeld_reference(outliers):
    states = _clients(9, seed=4, outliers=outliers)
    sizes = [5, 10, 20, 5, 40, 8, 9, 30, 12]
    got = _aggregate(GeometricMedian(iters=50), states, sizes)
    beta = np_weiszfeld(_stacked(states, TRAINED), np.array(sizes, float), iters=50)
    want = _unflat(beta @ _stacked(states))
    want["bn.running_mean"] = np_median_statistics(states)
    for key, ref in want.items():
        np.testing.assert_allclose(got[key].numpy(), ref, rtol=1e-4, atol=1e-4)
    if outliers:  # a third of the clients 50 away move the median by far less than the mean
        mean = np.average(_stacked(states), axis=0, weights=sizes)
        median = np.concatenate([got["conv.weight"].numpy().ravel(), got["bn.running_mean"].numpy()])
        assert np.abs(median).max() < np.abs(mean).max() / 3


def test_geometric_median_of_identical_clients_is_that_client():
    state = _clients(1, seed=2)[0]
    got = _aggregate(GeometricMedian(iters=5), [state] * 4, [1, 2, 3, 4])
    torch.testing.assert_close(got["conv.weight"], state["conv.weight"])


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clip_update_bounds_the_update_norm_like_numpy(max_norm):
    rng = np.random.default_rng(0)
    g = {k: torch.tensor(v, dtype=torch.float32) for k, v in _unflat(rng.normal(size=10)).items()}
    w = {k: v + torch.tensor(rng.normal(size=v.shape), dtype=torch.float32) for k, v in g.items()}
    g["n"] = w["n"] = torch.tensor(3)
    delta = _flat(w, TRAINED) - _flat(g, TRAINED)
    norm = update_norm(g, w)
    assert norm == pytest.approx(np.linalg.norm(delta), rel=1e-6)
    clipped = clip_update(g, w, max_norm, norm)
    want = _flat(g, TRAINED) + delta * min(1.0, max_norm / np.linalg.norm(delta))
    np.testing.assert_allclose(_flat(clipped, TRAINED), want, rtol=1e-5, atol=1e-6)
    assert update_norm(g, clipped) == pytest.approx(min(max_norm, norm), rel=1e-5)
    assert torch.equal(clipped["bn.running_mean"], w["bn.running_mean"])  # statistics: the loop takes their median
    assert int(clipped["n"]) == 3


def test_update_norm_leaves_batchnorm_statistics_out():
    g = {"conv.weight": torch.zeros(4), "bn.running_var": torch.ones(4)}
    w = {"conv.weight": torch.full((4,), 0.5), "bn.running_var": torch.full((4,), 101.0)}
    assert update_norm(g, w) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "strategy", [Krum(byzantine=2), Krum(byzantine=2, keep=5), Bulyan(byzantine=1), GeometricMedian(iters=50)]
)
def test_batchnorm_statistics_do_not_hide_an_attacker(strategy):
    """Honest non-IID clients' statistics spread widely; two attackers shift their parameters by
    50 and send the most central statistics. Over every float entry the attackers would look
    the most typical clients; over the trained parameters they are the outliers they are."""
    rng = np.random.default_rng(7)
    states = []
    for i in range(9):
        attacker = i < 2
        states.append(
            {
                "conv.weight": torch.tensor(rng.normal(50.0 if attacker else 0.0, 1.0, (3, 2)), dtype=torch.float32),
                "bn.running_mean": torch.tensor(
                    np.zeros(4) if attacker else rng.normal(0.0, 100.0, 4), dtype=torch.float32
                ),
            }
        )
    got = _aggregate(strategy, states, [10] * 9)
    assert got["conv.weight"].abs().max() < 5


def _honest_and_bn_poisoner(k: int = 7, seed: int = 11):
    """k - 1 honest clients, and one whose parameters are their exact mean (the most central of
    all, so Krum picks it) and whose statistics are poisoned by ``attack=bn_stats``."""
    rng = np.random.default_rng(seed)
    honest = [
        {
            "conv.weight": torch.tensor(rng.normal(0.0, 1.0, (3, 2)), dtype=torch.float32),
            "bn.running_mean": torch.tensor(rng.normal(0.0, 1.0, 4), dtype=torch.float32),
            "bn.running_var": torch.tensor(rng.uniform(0.5, 2.0, 4), dtype=torch.float32),
            "bn.num_batches_tracked": torch.tensor(5),
        }
        for _ in range(k - 1)
    ]
    central = {key: torch.stack([h[key] for h in honest]).float().mean(0) for key in ("conv.weight",)}
    bad = poison(honest[0], {**honest[0], **central}, "bn_stats", 0.0, torch.Generator())
    return [bad, *honest]


def test_the_bn_stats_attack_changes_only_the_statistics():
    bad, honest = _honest_and_bn_poisoner()[:2]
    assert torch.equal(
        bad["conv.weight"], torch.stack([s["conv.weight"] for s in _honest_and_bn_poisoner()[1:]]).mean(0)
    )
    torch.testing.assert_close(bad["bn.running_var"], honest["bn.running_var"] * 1e4)
    torch.testing.assert_close(bad["bn.running_mean"], honest["bn.running_mean"] + 1e4)
    assert torch.equal(bad["bn.num_batches_tracked"], honest["bn.num_batches_tracked"])


@pytest.mark.parametrize(
    "strategy",
    [Krum(), Krum(keep=4), Bulyan(), GeometricMedian(iters=20), Median(), TrimmedMean(0.2)],
    ids=["krum", "multikrum", "bulyan", "geometric_median", "median", "trimmed_mean"],
)
def test_poisoned_statistics_behind_honest_parameters_do_not_reach_the_model(strategy):
    states = _honest_and_bn_poisoner()
    got = _aggregate(strategy, states, [10] * len(states))
    honest_var = torch.stack([s["bn.running_var"] for s in states[1:]])
    honest_mean = torch.stack([s["bn.running_mean"] for s in states[1:]])
    assert (got["bn.running_var"] <= honest_var.max(0).values).all()
    assert (got["bn.running_mean"] <= honest_mean.max(0).values).all()
    everyone = torch.stack([s["bn.running_var"] for s in states])  # 7 clients: the median is the middle one
    torch.testing.assert_close(got["bn.running_var"], everyone.median(0).values)


def test_multikrum_averages_the_selected_clients_unweighted_as_blanchard_et_al():
    states = _clients(6, seed=3)
    chosen = krum_select(pairwise_sq_distances(states), 1, 3)
    sizes = [1000 if i == chosen[0] else 1 for i in range(6)]  # a selected client claims a huge size
    got = _aggregate(Krum(byzantine=1, keep=3), states, sizes)
    want = np.mean([states[i]["conv.weight"].numpy() for i in chosen], axis=0)
    np.testing.assert_allclose(got["conv.weight"].numpy(), want, rtol=1e-6)


def test_bulyan_records_the_f_it_used():
    states = _clients(7, seed=1, outliers=1)
    fit = FitRound(1, states[0])
    Bulyan(byzantine=3).aggregate_fit(fit, iter(ClientResult(i, s, 1) for i, s in enumerate(states)))
    assert fit.metrics == {"bulyan_f": 1.0}  # 7 results: 4f + 3 <= 7 allows f = 1, not 3
