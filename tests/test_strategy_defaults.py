"""Every strategy's default learns: one real round moves the weights and lowers the loss.

The defaults that shipped before (FedAdam and FedYogi with η = τ = 1e-3, FedAvgM with
η = 1 - β) moved round 1 by about 0.05 and 0.1 of FedAvg's step: runs that looked like
the algorithm losing, when only the default did. Each strategy here runs its first round
on real CIFAR-100 with every parameter at its default, and must move the trained
parameters at least a quarter as far as FedAvg does, and lower the loss on the clients'
training images.
"""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from fedcifar.config import build_config
from fedcifar.federation import model_spec
from fedcifar.sim.engine import run_training
from fedcifar.strategy.registry import STRATEGIES
from helpers import loss_on, weight_step

ONE_ROUND = dict(
    model="resnet20", num_clients=4, clients_per_round=4, rounds=1, local_steps=3, batch_size=32,
    eval_limit=32, precision="fp32", compile="off", workers=1,
)  # fmt: skip
MIN_RATIO = 0.25  # of FedAvg's round-1 step; the old FedAvgM default sat at 0.1, FedAdam's at ~0.05


def _first_round(tmp_path, cifar, name: str):
    cfg = build_config("smoke", None, {**ONE_ROUND, "strategy": name})
    run_training(cfg, tmp_path / name, cifar, progress=False)
    start = model_spec(cfg).build(seed=cfg.seed).state_dict()
    return cfg, start, load_file(tmp_path / name / "model_global.safetensors")


def _train_loss(cfg, weights, cifar) -> float:
    return loss_on(cfg, weights, cifar.train_x[:256], cifar.train_y[:256])


@pytest.fixture(scope="module")
def fedavg_step(tmp_path_factory, cifar) -> float:
    _, start, end = _first_round(tmp_path_factory.mktemp("fedavg"), cifar, "fedavg")
    return weight_step(start, end)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_default_of_every_strategy_moves_the_weights_and_lowers_the_loss(tmp_path, cifar, fedavg_step, name):
    cfg, start, end = _first_round(tmp_path, cifar, name)
    ratio = weight_step(start, end) / fedavg_step
    assert ratio >= MIN_RATIO, f"{name}'s default moved round 1 by {ratio:.3f} of FedAvg's step"
    assert _train_loss(cfg, end, cifar) < _train_loss(cfg, start, cifar)
