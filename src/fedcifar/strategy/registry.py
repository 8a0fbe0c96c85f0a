"""Strategies and client selectors, pluggable by name."""

from __future__ import annotations

from collections.abc import Callable

from fedcifar.config import effective
from fedcifar.strategy import selection
from fedcifar.strategy.base import Strategy
from fedcifar.strategy.dp import DPFedAvg, RecordLevelDP, dp_settings, record_settings
from fedcifar.strategy.fedavg import FedAvg
from fedcifar.strategy.fedbn import FedBN
from fedcifar.strategy.feddyn import FedDyn
from fedcifar.strategy.fedexp import FedExP
from fedcifar.strategy.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedcifar.strategy.fedprox import FedProx
from fedcifar.strategy.robust import Bulyan, GeometricMedian, Krum, Median, TrimmedMean
from fedcifar.strategy.scaffold import Scaffold
from fedcifar.strategy.weighting import Weighting


def _weighting(cfg) -> Weighting:
    return Weighting(cfg.client_weighting, cfg.disco_a, cfg.disco_b)


def _adaptive(cls):
    return lambda cfg: cls(effective(cfg, "server_lr"), cfg.beta1, cfg.beta2, effective(cfg, "tau"), _weighting(cfg))


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": lambda cfg: FedAvg(_weighting(cfg)),
    "fedprox": lambda cfg: FedProx(cfg.proximal_mu, _weighting(cfg)),
    "fedavgm": lambda cfg: FedAvgM(effective(cfg, "server_lr"), cfg.server_momentum, _weighting(cfg)),
    "fedadam": _adaptive(FedAdam),
    "fedyogi": _adaptive(FedYogi),
    "fedadagrad": _adaptive(FedAdagrad),
    "scaffold": lambda cfg: Scaffold(cfg.num_clients, effective(cfg, "server_lr"), _weighting(cfg)),
    "feddyn": lambda cfg: FedDyn(cfg.num_clients, cfg.feddyn_alpha),
    "fedexp": lambda cfg: FedExP(cfg.fedexp_epsilon, _weighting(cfg)),
    "median": lambda cfg: Median(_weighting(cfg)),
    "trimmed_mean": lambda cfg: TrimmedMean(cfg.trim_ratio, _weighting(cfg)),
    "krum": lambda cfg: Krum(cfg.krum_byzantine, 1, _weighting(cfg)),
    "multikrum": lambda cfg: Krum(
        cfg.krum_byzantine, cfg.krum_select or cfg.clients_per_round - cfg.krum_byzantine, _weighting(cfg)
    ),
    "bulyan": lambda cfg: Bulyan(cfg.krum_byzantine, _weighting(cfg)),
    "geometric_median": lambda cfg: GeometricMedian(cfg.geomed_iters, _weighting(cfg)),
}
SELECTORS: dict[str, Callable[[selection.SelectionContext], list[int]]] = {
    "uniform": selection.select_uniform,
    "size_weighted": selection.select_size_weighted,
    "power_of_choice": selection.select_power_of_choice,
    "poisson": selection.select_poisson,
}


def build_strategy(cfg) -> Strategy:
    """The configured strategy; ``norm=fedbn`` wraps it so BatchNorm layers stay with clients,
    ``dp=client`` in client-level DP-FedAvg, ``dp=record`` in record-level DP-SGD's accounting."""
    strategy = STRATEGIES[cfg.strategy](cfg)
    if cfg.norm == "fedbn":
        strategy = FedBN(strategy)
    if cfg.dp == "client":
        return DPFedAvg(strategy, dp_settings(cfg))
    if cfg.dp == "record":
        return RecordLevelDP(strategy, record_settings(cfg))
    return strategy
