"""Record-level DP-SGD (dp=record): the step against a reference written from Abadi et al. 2016,
the clip, the noise, the Poisson batches, each client's own ledger and the run's budget stop."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp
from torch.nn import functional as F

from fedcifar.client.train import train_client
from fedcifar.config import ConfigError, build_config
from fedcifar.messages import DP_LEDGER, ClientInstructions
from fedcifar.model import build_model
from fedcifar.privacy.dpsgd import (
    PrivacyBudgetSpent,
    PrivateGradients,
    RecordPlan,
    ledger_epsilon,
    ledger_rows,
    poisson_batches,
)
from fedcifar.privacy.noise import SeededNormal
from fedcifar.runtime import Runtime
from fedcifar.sim.engine import run_training
from fedcifar.track.checkpoint import load_checkpoint
from helpers import tiny_config


def _model():
    return build_model(norm="group", num_classes=100, seed=0, arch="resnet20")


def _runtime():
    return Runtime(torch.device("cpu"), None, False, 1, 1)


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 100, (n,), generator=g)


def _direct_epsilon(q, z, steps, delta):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )
    r = rdp.RdpAccountant().compose(event).get_epsilon(delta)
    p = pld.PLDAccountant(value_discretization_interval=1e-3).compose(event).get_epsilon(delta)
    return min(r, p)


def test_a_step_is_the_sum_of_clipped_per_image_gradients_plus_noise_over_the_expected_batch():
    # Abadi et al. 2016, Algorithm 1: g_i for each image, g_i / max(1, ||g_i|| / C), sum, + N(0, σ²C²), / L.
    model, runtime = _model(), _runtime()
    x, y = _batch(5)
    clip, sigma, expected_batch = 17.0, 0.7, 8
    params = [p for p in model.parameters() if p.requires_grad]
    reference = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(len(y)):  # one backward pass per image: the definition, not vmap
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in params]
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        norms.append(float(norm))
        for acc, g in zip(reference, grads, strict=True):
            acc.add_(g / max(1.0, float(norm) / clip))
    noise = SeededNormal(5)
    for acc, p in zip(reference, params, strict=True):
        acc.add_(sigma * clip * noise(p.shape)).div_(expected_batch)
    assert min(norms) < clip < max(norms)  # some images are clipped, some are not

    model.zero_grad()
    private = PrivateGradients(model, clip, sigma, expected_batch, SeededNormal(5), runtime)
    loss, logits = private(x, y)
    np.testing.assert_allclose(private.last_norms.numpy(), norms, rtol=1e-4)
    for p, want in zip(params, reference, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)
    assert logits.shape == (5, 100) and loss == pytest.approx(float(F.cross_entropy(logits, y)))


def test_each_image_moves_the_gradient_by_at_most_c_over_b_and_the_noise_std_is_sigma_c_over_b():
    model, runtime = _model(), _runtime()
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = _batch(1, seed=1)
    clip, batch = 0.01, 4  # far below this image's gradient norm: it is clipped to exactly C
    PrivateGradients(model, clip, 0.0, batch, SeededNormal(1), runtime)(x, y)
    joint = float(torch.sqrt(sum(p.grad.square().sum() for p in params)))
    assert joint == pytest.approx(clip / batch, rel=1e-4)
    # An empty Poisson batch is still a step: pure noise, of std σC/B per coordinate.
    sigma = 1.5
    PrivateGradients(model, 1.0, sigma, batch, SeededNormal(2), runtime)(x[:0], y[:0])
    noise = torch.cat([p.grad.flatten() for p in params])
    assert noise.numel() > 200_000
    assert float(noise.std()) == pytest.approx(sigma * 1.0 / batch, rel=0.01)
    assert abs(float(noise.mean())) < 0.01 * sigma / batch


def test_poisson_batches_take_each_image_at_rate_q():
    n, q, steps = 500, 0.1, 400
    batches = list(poisson_batches(n, q, steps, per_epoch=10, rng=np.random.default_rng(0)))
    assert len(batches) == steps and [e for e, _ in batches][:12] == [0] * 10 + [1, 1]
    sizes = np.array([len(idx) for _, idx in batches])
    assert sizes.mean() == pytest.approx(n * q, rel=0.02)  # 400 steps: std of the mean about 0.3
    assert len(set(sizes.tolist())) > 5  # the size varies: not a fixed-size batch
    hits = np.bincount(np.concatenate([idx.numpy() for _, idx in batches]), minlength=n)
    assert hits.mean() / steps == pytest.approx(q, rel=0.02)


def _instructions(**over):
    fields = dict(seed=1, epochs=1, steps=2, batch_size=8, dp_sample_clip=1.0, dp_sample_noise=1.2, dp_delta=1e-4)
    return ClientInstructions(**{**fields, **over})


def test_the_clients_own_ledger_composes_over_its_rounds_and_refuses_the_round_past_its_budget():
    model, runtime = _model(), _runtime()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (40,), generator=g)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    q, sigma, steps = 8 / 40, 1.2, 2
    direct = [_direct_epsilon(q, sigma, steps * t, 1e-4) for t in (1, 2, 3)]
    state = {}
    for t in range(2):
        result = train_client(model, weights, images, labels, _instructions(seed=t), runtime, 0, state)
        state = result.state
        assert result.metrics["dp_epsilon"] == pytest.approx(direct[t], rel=1e-6)
        assert ledger_rows(state[DP_LEDGER]) == [[q, sigma, float(steps)]] * (t + 1)
        assert any(not torch.equal(result.weights[k], weights[k]) for k in weights)  # it trained
    assert ledger_epsilon(ledger_rows(state[DP_LEDGER]), 1e-4) == pytest.approx(direct[1], rel=1e-6)
    budget = (direct[1] + direct[2]) / 2
    with pytest.raises(PrivacyBudgetSpent, match="privacy budget spent"):
        train_client(model, weights, images, labels, _instructions(seed=2, dp_budget=budget), runtime, 0, state)
    plan = RecordPlan.of(40, _instructions(steps=0, epochs=2))
    assert (plan.steps, plan.per_epoch, plan.rate) == (10, 5, q)  # two expected epochs of ceil(40 / 8)


RECORD = dict(dp="record", norm="group", dp_seed=3, delta=1e-4, dp_noise_multiplier=1.0)


def test_a_record_level_run_reports_the_worst_clients_epsilon_stops_before_its_budget_and_resumes(tmp_path, cifar):
    cfg = tiny_config("paper-cpu", **RECORD, num_clients=4, clients_per_round=2, rounds=6)
    # Plan the budget from the clients' sizes: client k after t rounds is at ε(q_k, σ, steps·t).
    from fedcifar.federation import partition_for

    sizes = [len(p) for p in partition_for(cfg, cifar.train_y.numpy())]
    steps = cfg.local_steps
    assert steps > 0
    eps = {(n, t): _direct_epsilon(cfg.batch_size / n, 1.0, steps * t, 1e-4) for n in sizes for t in range(1, 7)}
    worst_after = [max(eps[(n, t)] for n in sizes) for t in range(1, 7)]
    # With 2 of 4 clients a round, no client can have trained more than t rounds after round t,
    # and the server stops before any client could pass the budget. Pick it between rounds 2 and 3.
    target = (worst_after[1] + worst_after[2]) / 2
    frame = run_training(cfg.replace(target_epsilon=target), tmp_path / "run", cifar, progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    per_client = {}
    for key, tensor in ckpt.client_tensors.items():
        client, entry, _ = key.split(".")
        if entry == DP_LEDGER:
            per_client[int(client)] = ledger_epsilon([[float(v) for v in r] for r in tensor.tolist()], 1e-4)
    assert per_client and max(per_client.values()) <= target
    assert frame["dp_epsilon"].iloc[-1] == pytest.approx(max(per_client.values()), rel=1e-6)
    assert frame["dp_epsilon"].is_monotonic_increasing
    stopped = len(frame)
    assert 2 <= stopped < 6
    trained = ckpt.meta["strategy"]["dp_record"]["rounds_trained"]
    assert sum(trained.values()) == 2 * stopped  # the mirror counted every pick
    assert max(eps[(sizes[int(c)], n + 1)] for c, n in trained.items()) > target  # a next round could pass it
    more = run_training(
        cfg.replace(target_epsilon=worst_after[-1] * 2), tmp_path / "run", cifar, resume=True, progress=False
    )
    assert more["round"].tolist() == list(range(1, 7))
    assert more["dp_epsilon"].iloc[-1] > frame["dp_epsilon"].iloc[-1]


@pytest.mark.parametrize(
    ("over", "says"),
    [
        (dict(norm="batch"), "BatchNorm"),
        (dict(fedlc_tau=1.0), "FedLC"),
        (dict(feddecorr_beta=0.1), "FedDecorr"),
        (dict(client_selection="power_of_choice"), "power_of_choice"),
        (dict(client_weighting="feddisco"), "FedDisco"),
    ],
)
def test_record_level_refuses_what_has_no_per_image_sensitivity(over, says):
    with pytest.raises(ConfigError, match=says) as info:
        build_config("paper-cpu", None, {**RECORD, **over})
    assert "\n" not in str(info.value)


def test_record_level_runs_under_any_strategy_with_size_weighting():
    for strategy in ("fedavg", "scaffold", "median", "fedadam"):
        cfg = build_config("paper-cpu", None, {**RECORD, "strategy": strategy})
        assert cfg.client_weighting == "num_examples" and cfg.dp == "record"
