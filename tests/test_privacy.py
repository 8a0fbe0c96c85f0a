"""Client-level DP-FedAvg: the accountant, the clip, the noise, adaptive clipping, Poisson
sampling, the refused configurations and the budget stop (docs/privacy.md)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp

from fedcifar.client.train import train_client
from fedcifar.config import ConfigError, build_config
from fedcifar.messages import ClientInstructions, ClientResult
from fedcifar.model import build_model
from fedcifar.privacy import mechanism as mech
from fedcifar.privacy.accountant import Sampling, add_release, epsilon, rdp_epsilon
from fedcifar.privacy.noise import SecureNormal, SeededNormal, noise_source, urandom_normal
from fedcifar.runtime import Runtime
from fedcifar.sim.engine import run_training
from fedcifar.strategy.base import FitRound
from fedcifar.strategy.dp import DPFedAvg, DPSettings
from fedcifar.strategy.fedavg import FedAvg
from fedcifar.strategy.registry import build_strategy
from fedcifar.strategy.selection import SelectionContext, select_poisson
from fedcifar.track.checkpoint import load_checkpoint
from helpers import tiny_config

DP = dict(dp="client", norm="group", client_weighting="uniform")

# --- the accountant ---------------------------------------------------------------------------


def test_poisson_client_epsilon_is_the_smaller_of_rdp_and_pld_computed_directly():
    q, z, rounds, delta = 0.25, 1.0, 100, 1e-3
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    by_rdp = rdp.RdpAccountant().compose(event).get_epsilon(delta)
    by_pld = pld.PLDAccountant(value_discretization_interval=1e-3).compose(event).get_epsilon(delta)
    ours = epsilon(Sampling(64, 16, q), [(z, rounds)], delta)
    assert ours == pytest.approx(min(by_rdp, by_pld), rel=1e-9)
    assert by_pld < by_rdp  # here PLD is the tighter one, so it is what we report


def test_fixed_size_sampling_uses_replace_one_with_half_the_noise_multiplier():
    # Replacing one of the m clients moves the clipped sum by up to 2C: sensitivity 2C, so the
    # Gaussian's multiplier is z/2 (dp-accounting issue #378).
    s = Sampling(64, 16)
    assert s.relation is dp_accounting.NeighboringRelation.REPLACE_ONE
    assert s.event(1.0) == dp_accounting.SampledWithoutReplacementDpEvent(64, 16, dp_accounting.GaussianDpEvent(0.5))
    direct = (
        rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        .compose(dp_accounting.SelfComposedDpEvent(s.event(1.0), 50))
        .get_epsilon(1e-5)
    )
    assert epsilon(s, [(1.0, 50)], 1e-5) == pytest.approx(direct)
    # Every client every round: a plain Gaussian, whose RDP is alpha / (2 z^2) per release.
    full = Sampling(8, 8)
    assert full.event(2.0) == dp_accounting.GaussianDpEvent(2.0)
    acc = rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(full.event(2.0), 10))
    orders = np.array(acc._orders)
    np.testing.assert_allclose(acc._rdp, 10 * orders / (2 * 2.0**2))


@pytest.mark.parametrize(("z", "epochs", "published"), [(1.1, 60, 3.01), (0.7, 45, 7.10)])
def test_record_level_rdp_matches_tf_privacy_mnist_tutorial(z, epochs, published):
    # TF Privacy's MNIST DP-SGD tutorial (tutorials/README.md): 60,000 images, batch 256,
    # delta 1e-5. Its table used the classic RDP conversion eps = min_a rdp(a) + log(1/delta)/(a-1).
    s = Sampling(60_000, 256, 256 / 60_000)
    steps = epochs * 60_000 // 256
    acc = rdp.RdpAccountant(orders=[1 + x / 10 for x in range(1, 100)] + list(range(12, 64)))
    acc.compose(dp_accounting.SelfComposedDpEvent(s.event(z), steps))
    classic = min(r + math.log(1 / 1e-5) / (a - 1) for a, r in zip(acc._orders, acc._rdp, strict=True))
    assert classic == pytest.approx(published, abs=0.01)
    # dp-accounting's own conversion is tighter, and PLD tighter still: both below the table.
    assert epsilon(s, [(z, steps)], 1e-5) <= rdp_epsilon(s, z, steps, 1e-5) <= classic


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    s = Sampling(64, 16, 0.25)
    by_rounds = [epsilon(s, [(1.0, t)], 1e-5) for t in (1, 10, 50, 100)]
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 4
    by_noise = [epsilon(s, [(z, 50)], 1e-5) for z in (0.7, 1.0, 2.0, 4.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4
    assert epsilon(s, [], 1e-5) == 0.0
    # Releases at two noise levels compose: between all-low and all-high.
    mixed = epsilon(s, add_release(add_release([], 1.0, 10), 2.0, 10), 1e-5)
    assert epsilon(s, [(2.0, 20)], 1e-5) < mixed < epsilon(s, [(1.0, 20)], 1e-5)


# --- the noise source -------------------------------------------------------------------------


def test_default_noise_is_the_os_csprng_and_a_dp_seed_is_reproducible():
    assert isinstance(noise_source(0, 1, 2), SecureNormal)
    a, b = SecureNormal()((200_000,)), SecureNormal()((200_000,))
    assert not torch.equal(a, b)
    for draw in (a, urandom_normal(200_000)):
        draw = torch.as_tensor(draw, dtype=torch.float64)
        assert abs(float(draw.mean())) < 0.01 and float(draw.std()) == pytest.approx(1.0, abs=0.01)
    seeded = noise_source(7, 3)
    assert isinstance(seeded, SeededNormal)
    assert torch.equal(seeded((100,)), noise_source(7, 3)((100,)))
    assert not torch.equal(noise_source(7, 3)((100,)), noise_source(7, 4)((100,)))


# --- the client's clip ------------------------------------------------------------------------


def _tiny_model():
    return build_model(norm="group", num_classes=100, seed=0, arch="resnet20")


def _runtime():
    return Runtime(torch.device("cpu"), None, False, 1, 1)


@pytest.mark.parametrize("clip", [0.05, 1.0])
def test_clipping_bounds_the_joint_norm_of_everything_the_client_sends(clip):
    model = _tiny_model()
    global_weights = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (64,), generator=g)
    instructions = ClientInstructions(seed=1, epochs=1, batch_size=16, lr=0.05, dp_clip=clip)
    result = train_client(model, global_weights, images, labels, instructions, _runtime(), client_id=0)
    sent = mech.update_of(global_weights, result.weights)
    assert set(sent) == {k for k, v in global_weights.items() if v.is_floating_point()}
    assert mech.joint_norm(sent) <= clip * (1 + 1e-5)
    raw = train_client(
        model, global_weights, images, labels, ClientInstructions(seed=1, epochs=1, batch_size=16, lr=0.05), _runtime()
    )
    raw_norm = mech.joint_norm(mech.update_of(global_weights, raw.weights))
    assert raw_norm > clip  # the clip did something: Adam at 0.05 moves further than this
    assert result.metrics["dp_below_clip"] == -0.5
    torch.testing.assert_close(  # a clip scales the update, it does not change its direction
        mech.update_of(global_weights, result.weights)["fc.weight"],
        mech.update_of(global_weights, raw.weights)["fc.weight"] * (clip / raw_norm),
        rtol=1e-4,
        atol=1e-7,
    )


def test_integer_tensors_are_sent_back_unchanged_and_get_no_noise():
    global_weights = {"w": torch.zeros(1000), "count": torch.tensor(5, dtype=torch.int64)}
    weights = {"w": torch.ones(1000), "count": torch.tensor(9, dtype=torch.int64)}
    instructions = ClientInstructions(seed=3, dp_clip=1.0, dp_noise_std=0.5, dp_seed=11)
    sent, report = mech.privatize_update(global_weights, weights, instructions)
    assert sent["count"].dtype == torch.int64 and int(sent["count"]) == 5
    assert report == -0.5  # ||1000 ones|| = 31.6 > 1
    assert float(sent["w"].std()) == pytest.approx(0.5, rel=0.1)


# --- the server's noise -----------------------------------------------------------------------


def _settings(**over) -> DPSettings:
    values = dict(clip=2.0, noise_multiplier=1.5, client_noise=False, sampling=Sampling(64, 16), delta=1e-5, dp_seed=5)
    return DPSettings(**{**values, **over})


def _zero_results(global_weights, ids, instructions_by_client):
    """Clients whose update is zero (so the aggregate is noise alone), privatized as a client would."""
    out = []
    for cid in ids:
        ins = ClientInstructions(seed=100 + cid, **instructions_by_client.get(cid, {}))
        sent, report = mech.privatize_update(global_weights, global_weights, ins)
        out.append(ClientResult(cid, sent, 10, {"dp_below_clip": report}))
    return out


@pytest.mark.parametrize("client_noise", [False, True])
def test_the_noise_on_the_mean_has_std_z_c_over_m(client_noise):
    # Server noise: N(0, (zC)^2) on the sum; client noise: N(0, (zC)^2 / m) from each of m
    # clients. Either way the mean carries std z C / m: here 1.5 * 2 / 16 = 0.1875.
    s = _settings(client_noise=client_noise)
    dp = DPFedAvg(FedAvg(), s)
    global_weights = {"a": torch.zeros(300, 300), "b": torch.zeros(40_000)}
    ids = list(range(16))
    config = dp.configure_fit(1, ids)
    fit = FitRound(1, global_weights)
    new = dp.aggregate_fit(fit, _zero_results(global_weights, ids, config))
    noise = torch.cat([new["a"].flatten(), new["b"]]).double()
    assert float(noise.std()) == pytest.approx(1.5 * 2.0 / 16, rel=0.01)
    assert abs(float(noise.mean())) < 0.002
    assert fit.metrics["dp_noise_std"] == pytest.approx(1.5 * 2.0 / 16)
    assert fit.metrics["dp_epsilon"] == pytest.approx(epsilon(s.sampling, [(1.5, 1)], 1e-5))


def test_a_client_that_does_not_clip_is_clipped_by_the_server():
    dp = DPFedAvg(FedAvg(), _settings(noise_multiplier=1e-9, dp_seed=1))
    global_weights = {"w": torch.zeros(100)}
    liar = ClientResult(0, {"w": torch.full((100,), 50.0)}, 10, {"dp_below_clip": 40.0})
    new = dp.aggregate_fit(FitRound(1, global_weights), [liar])
    assert float(new["w"].norm()) == pytest.approx(2.0 / 16, rel=1e-6)  # C / m, not 500 / m


def test_adaptive_clipping_tracks_its_quantile_and_noises_with_the_norm_it_clipped_with():
    # Update norms uniform on [0, 10]: the median is 5. Andrew et al.'s geometric update with
    # eta = 0.2 settles near it from C = 0.5 within a few dozen rounds.
    s = _settings(clip=0.5, quantile=0.5, clip_lr=0.2, count_std=16 / 20, noise_multiplier=1.0)
    dp = DPFedAvg(FedAvg(), s)
    rng = np.random.default_rng(0)
    global_weights = {"w": torch.zeros(4000)}
    clips = []
    for r in range(1, 121):
        ids = list(range(16))
        config = dp.configure_fit(r, ids)
        used = config[0]["dp_clip"]
        results = []
        for cid in ids:
            direction = torch.randn(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(r * 100 + cid))
            update = (direction / direction.norm() * rng.uniform(0, 10)).float()
            sent, report = mech.privatize_update(
                global_weights, {"w": update}, ClientInstructions(seed=cid, **config[cid])
            )
            results.append(ClientResult(cid, sent, 10, {"dp_below_clip": report}))
        fit = FitRound(r, global_weights)
        dp.aggregate_fit(fit, results)
        # this round's noise is z_delta times the clip the clients used, not the updated clip
        assert fit.metrics["dp_clip"] == used
        assert fit.metrics["dp_noise_std"] == pytest.approx(s.update_multiplier * used / 16)
        clips.append(used)
    assert s.update_multiplier == pytest.approx((1.0 - (2 * 0.8) ** -2) ** -0.5)
    assert clips[0] == 0.5 and dp.clip != clips[-1]
    assert np.median(clips[60:]) == pytest.approx(5.0, rel=0.15)


def test_adaptive_noise_on_the_mean_uses_the_clip_of_its_round():
    s = _settings(clip=3.0, quantile=0.5, count_std=0.8, noise_multiplier=1.0)
    dp = DPFedAvg(FedAvg(), s)
    global_weights = {"w": torch.zeros(200_000)}
    ids = list(range(16))
    new = dp.aggregate_fit(FitRound(1, global_weights), _zero_results(global_weights, ids, dp.configure_fit(1, ids)))
    assert float(new["w"].double().std()) == pytest.approx(s.update_multiplier * 3.0 / 16, rel=0.01)
    assert dp.clip < 3.0  # every update was below the clip: it shrinks, for the next round only


# --- Poisson sampling -------------------------------------------------------------------------


def test_poisson_sampling_takes_each_client_at_rate_q():
    sizes = np.full(64, 10)
    counts = np.zeros(64)
    rounds = 2000
    for r in range(1, rounds + 1):
        ctx = SelectionContext(r, 0, 16, sizes, rate=0.1, rng=np.random.default_rng([9, r]))
        chosen = select_poisson(ctx)
        assert chosen == sorted(set(chosen))
        counts[chosen] += 1
    rate = counts.sum() / (64 * rounds)
    assert rate == pytest.approx(0.1, abs=3 * math.sqrt(0.1 * 0.9 / (64 * rounds)))
    assert counts.min() > 0.1 * rounds - 5 * math.sqrt(0.09 * rounds)  # every client, not a few
    default = select_poisson(SelectionContext(1, 0, 16, sizes, rng=np.random.default_rng(1)))
    assert 0 < len(default) < 64  # q = 16 / 64 when poisson_rate is 0


# --- refused configurations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "says"),
    [
        (dict(strategy="krum"), "looks at individual updates"),
        (dict(strategy="scaffold"), "per-client state"),
        (dict(strategy="fedexp"), "looks at individual updates"),
        (dict(client_weighting="num_examples"), "client_weighting=num_examples"),
        (dict(client_weighting="feddisco"), "client_weighting=feddisco"),
        (dict(client_selection="size_weighted"), "client_selection=size_weighted"),
        (dict(client_selection="power_of_choice"), "client_selection=power_of_choice"),
        (dict(norm="batch"), "norm=group"),
        (dict(norm="fedbn"), "norm=group"),
        (dict(clip_norm=1.0), "clip_norm"),
        (dict(min_fit_clients=4), "min_fit_clients"),
        (dict(dp_noise="client", client_selection="poisson"), "client_selection=uniform"),
        (dict(dp_clip_quantile=0.5, dp_noise_multiplier=2.0), "dp_count_noise"),
        (dict(dp_noise_multiplier=0.0), "dp_noise_multiplier"),
        (dict(dp="off", target_epsilon=4.0, norm="batch"), "target_epsilon needs dp"),
    ],
)
def test_configurations_that_break_the_sensitivity_are_refused_in_one_line(over, says):
    with pytest.raises(ConfigError) as err:
        build_config("paper-cpu", None, {**DP, **over})
    assert says in str(err.value) and "\n" not in str(err.value)


def test_every_mean_based_strategy_is_accepted_and_wrapped():
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        strategy = build_strategy(build_config("paper-cpu", None, {**DP, "strategy": name}))
        assert isinstance(strategy, DPFedAvg)


# --- a whole run: the budget stop and the resume ----------------------------------------------


def _dp_run_config(**over):
    return tiny_config(
        "paper-cpu",
        **DP,
        num_clients=8,
        clients_per_round=4,
        client_selection="poisson",
        dp_noise_multiplier=1.0,
        delta=1e-3,
        dp_seed=3,
        eval_every=1,
        **over,
    )


def test_the_budget_stop_comes_before_the_release_that_would_exceed_it_and_a_resume_continues(tmp_path, cifar):
    s = Sampling(8, 4, 0.5)
    eps = [epsilon(s, [(1.0, t)], 1e-3) for t in range(1, 8)]
    target = (eps[2] + eps[3]) / 2  # three rounds fit, a fourth would not
    cfg = _dp_run_config(rounds=6, target_epsilon=target)
    frame = run_training(cfg, tmp_path / "run", cifar, progress=False)
    assert frame["round"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(frame["dp_epsilon"], eps[:3], rtol=1e-9)
    assert frame["dp_epsilon"].max() <= target
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.round == 3 and ckpt.meta["strategy"]["dp"]["releases"] == [[1.0, 3]]
    # Resuming with the same budget stops at once; a larger one continues the same composition.
    again = run_training(cfg, tmp_path / "run", cifar, resume=True, progress=False)
    assert again["round"].tolist() == [1, 2, 3]
    more = run_training(cfg.replace(target_epsilon=eps[4]), tmp_path / "run", cifar, resume=True, progress=False)
    assert more["round"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(more["dp_epsilon"], eps[:5], rtol=1e-9)
