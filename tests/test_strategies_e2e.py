"""Every strategy, selection and norm option on real CIFAR-100 at a tiny scale, in process.

Each strategy runs two rounds (sharing the run with one selection, weighting or norm
option, so every option is covered too). It must move the trained parameters by a real
margin and lower the loss on the images its clients trained on (a strategy that returned
the global weights, or stepped against the clients' updates, fails), then its checkpointed
state must load into a fresh strategy and come back unchanged. Two stateful combinations are also interrupted
and resumed, and must end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedcifar.cli import main
from fedcifar.sim.engine import run_training
from fedcifar.strategy.registry import STRATEGIES, build_strategy
from fedcifar.track.checkpoint import load_checkpoint
from helpers import batch_stats_loss, client_images, run_and_weights, set_args, tiny, tiny_config, weight_step

LEARN = tiny(local_steps=3, batch_size=32)  # enough local work for two rounds to show learning
MIN_STEP = 1e-3  # ||w - w0|| / ||w0|| over trained parameters (0 for a strategy that returns the global weights)
MIN_DROP = 0.03  # nats on the trained clients' images; the two rounds lowered it by 0.07-0.28, a sign flip raised it
DETERMINISTIC = ["round", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "num_examples", "clients"]

# strategy -> the extra option it is run with (so each option is exercised once as well)
CASES = {
    "fedavg": {"client_selection": "poisson", "poisson_rate": 1.0},  # q = 1: every client joins, a fixed count
    "fedprox": {"client_selection": "size_weighted", "client_weighting": "uniform", "proximal_mu": 0.1},
    "fedavgm": {"norm": "group"},
    "fedadam": {"client_weighting": "feddisco"},
    "fedyogi": {"client_selection": "power_of_choice", "client_weighting": "uniform", "poc_samples": 32},
    "fedadagrad": {"client_optimizer": "sgd", "lr": 0.05},
    "scaffold": {"norm": "fedbn"},
    "feddyn": {"client_optimizer": "sgd", "momentum": 0.9, "lr": 0.01},
    "fedexp": {"client_weighting": "uniform", "lr_schedule": "cosine"},
    "median": {"client_weighting": "uniform", "clients_per_round": 3},
    "trimmed_mean": {"clients_per_round": 3, "trim_ratio": 0.34},
    "krum": {"partitioner": "iid"},  # Krum keeps one client's model: on IID shards it serves the others too
    "multikrum": {"clients_per_round": 3, "krum_select": 2},
    "bulyan": {"clients_per_round": 3, "clip_norm": 5.0},
    "geometric_median": {"geomed_iters": 3},
}
STATE_PREFIXES = {"fedavgm": ["velocity."], "fedadam": ["m.", "v."], "scaffold": ["c."], "feddyn": ["h."]}
CLIENT_STATE = {
    "scaffold": {"control", "local"},
    "feddyn": {"feddyn_grad"},
}  # what the clients keep (in the simulator's store)


def test_cases_cover_every_strategy_selection_weighting_and_norm():
    from fedcifar.strategy.registry import SELECTORS

    assert set(CASES) == set(STRATEGIES)
    options = [v for case in CASES.values() for v in case.values()]
    assert set(SELECTORS) - {"uniform"} <= set(options)
    assert {"feddisco", "uniform", "group", "fedbn", "sgd"} <= set(options)


@pytest.mark.parametrize("name", sorted(CASES))
def test_strategy_learns_in_two_rounds_and_its_checkpoint_reloads(tmp_path, cifar, name):
    cfg = tiny_config(**{**LEARN, "strategy": name, **CASES[name]})
    frame, start, weights = run_and_weights(cfg, tmp_path, cifar)
    assert list(frame["round"]) == [1, 2]
    assert np.isfinite(frame[["train_loss", "test_loss"]].to_numpy()).all()
    per_round = cfg.num_clients if cfg.client_selection == "poisson" else cfg.clients_per_round
    assert frame["clients"].map(lambda s: len(str(s).split())).eq(per_round).all()

    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    moved = weight_step(start, weights) / weight_step({k: torch.zeros_like(v) for k, v in start.items()}, start)
    assert moved > MIN_STEP, f"{name} moved the trained parameters by {moved:.2e} of their norm"
    trained = [int(c) for clients in frame["clients"] for c in str(clients).split()]
    images, labels = client_images(cfg, cifar, trained)
    before, after = batch_stats_loss(cfg, start, images, labels), batch_stats_loss(cfg, weights, images, labels)
    assert after < before - MIN_DROP, f"{name}: loss on its clients' images {before:.3f} -> {after:.3f}"

    ckpt = load_checkpoint(tmp_path)
    for prefix in STATE_PREFIXES.get(name, []):
        assert any(k.startswith(prefix) for k in ckpt.strategy_tensors), prefix
    assert {k.split(".")[1] for k in ckpt.client_tensors} == CLIENT_STATE.get(name, set())
    assert not any(k.startswith(("store.", "fedbn.")) for k in ckpt.strategy_tensors)  # no client state on the server
    fresh = build_strategy(cfg)
    fresh.load_state_dict(ckpt.strategy_tensors, ckpt.meta["strategy"])
    tensors, meta = fresh.state_dict()
    assert tensors.keys() == ckpt.strategy_tensors.keys()
    assert all(torch.equal(tensors[k], ckpt.strategy_tensors[k]) for k in tensors)


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize(
    "over",
    [
        # c, every c_i, FedBN's local layers and the loss-based selection must all come back
        dict(
            strategy="scaffold",
            norm="fedbn",
            client_selection="power_of_choice",
            client_weighting="uniform",
            poc_samples=32,
            num_clients=3,
        ),
        dict(strategy="fedadam", client_weighting="feddisco", client_selection="size_weighted", num_clients=3),
    ],
    ids=["scaffold-fedbn-poc", "fedadam-feddisco"],
)
def test_interrupted_and_resumed_stateful_run_equals_uninterrupted(tmp_path, cifar, over):
    cfg = tiny_config(**over)
    full = run_training(cfg, tmp_path / "full", cifar, progress=False)

    def stop(server_round, row):
        if server_round == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(cfg, tmp_path / "cut", cifar, progress=False, callbacks=(stop,))
    resumed = run_training(cfg, tmp_path / "cut", cifar, resume=True, progress=False)
    pd.testing.assert_frame_equal(full[DETERMINISTIC], resumed[DETERMINISTIC])
    a = load_file(tmp_path / "full" / "checkpoint.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # weights, strategy and client state


def test_resuming_a_checkpoint_from_before_client_held_state_says_it_is_not_exact(tmp_path, cifar, capsys):
    cfg = tiny_config(rounds=1, strategy="scaffold", norm="fedbn")
    run_training(cfg, tmp_path / "new", cifar, progress=False)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    ckpt = tmp_path / "old" / "checkpoint.safetensors"  # as written then: c_i on the server
    with safe_open(ckpt, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(ckpt)
    tensors["strategy.store.0.c.conv1.weight"] = torch.zeros(3)
    save_file(tensors, ckpt, metadata=metadata)
    capsys.readouterr()

    more = tiny_config(strategy="scaffold", norm="fedbn")
    run_training(more, tmp_path / "new", cifar, resume=True, progress=False)
    assert "not exact" not in capsys.readouterr().err
    run_training(more, tmp_path / "old", cifar, resume=True, progress=False)
    assert "state restarts empty, so this resume is not exact" in capsys.readouterr().err


def test_compare_command_writes_table_and_plot_and_fedprox_mu0_equals_fedavg(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--preset", "smoke", "--quiet", "--out", str(out), "--target", "0.01"]
    args += set_args(tiny())
    assert main([*args, "--strategies", "fedavg", "fedprox:proximal_mu=0"]) == 0
    printed = capsys.readouterr().out
    assert "| `fedprox:proximal_mu=0` |" in printed and "rounds to 1%" in printed and "client p10" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["variant"]) == ["fedavg", "fedprox:proximal_mu=0"]
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fedprox_proximal_mu=0" / "metrics.csv").exists()
    runs = [pd.read_csv(out / d / "metrics.csv") for d in ("fedavg", "fedprox_proximal_mu=0")]
    pd.testing.assert_frame_equal(runs[0][DETERMINISTIC], runs[1][DETERMINISTIC])  # FedProx(μ=0) is FedAvg
    assert table["final_test_acc"].iloc[0] == table["final_test_acc"].iloc[1]

    # Re-running reads the finished runs back instead of training them again.
    before = (out / "fedavg" / "metrics.csv").stat().st_mtime_ns
    assert main([*args, "--strategies", "fedavg"]) == 0
    assert (out / "fedavg" / "metrics.csv").stat().st_mtime_ns == before


def test_compare_reads_the_first_rounds_of_a_longer_run_as_the_shorter_run(tmp_path, cifar, capsys):
    """A 3-round FedAvgM run (server_lr written out) stands for the 2-round variant asking for the default."""
    out = tmp_path / "cmp"
    run_training(tiny_config(rounds=3, strategy="fedavgm", server_lr=1.0), out / "fedavgm", cifar, progress=False)
    short = run_training(tiny_config(strategy="fedavgm"), tmp_path / "short", cifar, progress=False)
    before = (out / "fedavgm" / "metrics.csv").stat().st_mtime_ns
    args = ["compare", "--preset", "smoke", "--quiet", "--out", str(out), *set_args(tiny()), "--strategies", "fedavgm"]
    assert main(args) == 0
    assert (out / "fedavgm" / "metrics.csv").stat().st_mtime_ns == before  # read, not trained
    longer = pd.read_csv(out / "fedavgm" / "metrics.csv")
    pd.testing.assert_frame_equal(longer[DETERMINISTIC].iloc[:2], short[DETERMINISTIC].reset_index(drop=True))
    table = pd.read_csv(out / "comparison.csv")
    assert table["final_test_loss"].iloc[0] == short["test_loss"].iloc[-1] != longer["test_loss"].iloc[-1]

    # Under a cosine schedule the longer run's rounds 1-2 are not a 2-round run: refused in one line.
    run_training(tiny_config(rounds=3, lr_schedule="cosine"), out / "fedavg", cifar, progress=False)
    code = main([*args[:-1], "fedavg", "--set", "lr_schedule=cosine"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "holds 3 rounds, and its first 2 are not a 2-round run: lr_schedule=cosine" in err


@pytest.mark.parametrize(
    ("strategies", "message"),
    [
        (["fedmagic"], "strategy='fedmagic' is not one of"),
        (["fedprox:proximal_mu=-1"], "proximal_mu must be >= 0"),
        (["fedprox:mu"], "expected key=value"),
        (["krum:krum_byzantine=1"], "krum needs clients_per_round > 2 * krum_byzantine + 2"),
    ],
)
def test_compare_errors_are_one_line_and_start_no_training(tmp_path, capsys, strategies, message):
    code = main(["compare", "--preset", "smoke", "--out", str(tmp_path / "c"), "--strategies", *strategies])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()
