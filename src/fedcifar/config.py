"""One typed, frozen configuration for a federated run.

The defaults are the paper's setting. A config is built from a preset, then a
YAML file, then ``key=value`` overrides, and is validated before any data is
loaded, so a bad value fails in milliseconds with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from fedcifar.atomic import atomic_write_text


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message is one line for the user."""


Partitioner = Literal["dirichlet", "iid", "shards"]
Norm = Literal["batch", "group", "fedbn"]
Model = Literal["resnet18", "resnet20"]  # model/resnet.py ARCHITECTURES (a test keeps the two in step)
ClientWeighting = Literal["num_examples", "uniform", "feddisco"]
ClientOptimizer = Literal["adam", "sgd"]
LrSchedule = Literal["constant", "exponential", "cosine"]
Precision = Literal["auto", "bf16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]
Compile = Literal["auto", "on", "off"]
# The names strategy/registry.py builds (a test keeps the lists in step): plain data here, so a
# config validates without importing torch or any strategy.
StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "scaffold",
    "feddyn",
    "fedexp",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "bulyan",
    "geometric_median",
]
ClientSelection = Literal["uniform", "size_weighted", "power_of_choice", "poisson"]
DP = Literal["off", "client", "record"]
DPNoise = Literal["server", "client"]
FaultKind = Literal["raise", "nan", "hang"]
Attack = Literal["none", "sign_flip", "scale", "gaussian", "label_flip", "bn_stats"]


@dataclass(frozen=True)
class Config:
    """Everything that decides what a run computes. Saved as ``config.yaml`` in each run."""

    seed: int = 0
    # data and partition
    num_clients: int = 64
    partitioner: Partitioner = "dirichlet"
    alpha: float = 0.4
    min_partition_size: int = 10
    shards_per_client: int = 2
    # federated schedule
    rounds: int = 100
    clients_per_round: int = 16
    min_fit_clients: int = 0  # a round with fewer results is skipped (keeps the weights); 0 = clients_per_round
    round_timeout: float = 0.0  # seconds a round waits for its clients (any backend); 0 = no limit
    # local training (the client's instructions)
    local_epochs: int = 2
    local_steps: int = 0  # > 0 replaces epochs by a fixed number of minibatches
    batch_size: int = 64
    lr: float = 1e-3
    augment: bool = True
    client_optimizer: ClientOptimizer = "adam"  # sgd makes SCAFFOLD's correction exactly the paper's
    momentum: float = 0.0  # sgd only: heavy-ball momentum of the client's optimizer (reset every round)
    weight_decay: float = 0.0  # L2 penalty in the client's optimizer (torch's weight_decay, adam or sgd)
    # > 0 clips each minibatch gradient (after FedProx's/FedDyn's terms) to this total L2 norm before
    # the step, as FedDyn's official code does at 10; 0 = off. clip_norm bounds the sent update instead.
    grad_clip: float = 0.0
    # The client lr across rounds: round r trains at lr (constant), lr * lr_decay^(r-1) (exponential,
    # FedMLB's 0.998 per round, Kim et al. 2022), or lr * (1 + cos(pi (r-1) / rounds)) / 2 (cosine).
    lr_schedule: LrSchedule = "constant"
    lr_decay: float = 0.998  # exponential only
    # Label-skew terms of the local objective, with any strategy (client/losses.py); 0 = off:
    fedlc_tau: float = 0.0  # FedLC logit calibration, logit_y - tau * n_y^(-1/4) (Zhang et al. 2022)
    feddecorr_beta: float = 0.0  # FedDecorr, + beta * ||corr(features)||_F^2 / d^2 (Shi et al. 2023)
    # model: resnet18 is the paper's; resnet20 (He et al. 2016) runs the paper's federation on a CPU.
    # norm "fedbn": BatchNorm layers stay local to each client, see strategy/fedbn.py
    model: Model = "resnet18"
    norm: Norm = "batch"
    # server strategy and its parameters (unused ones are ignored by a strategy)
    strategy: StrategyName = "fedavg"
    client_selection: ClientSelection = "uniform"
    client_weighting: ClientWeighting = "num_examples"
    # fedprox: weight of (mu/2)||w - w_global||^2; Li et al. 2020 (0.1 and 1 screened lower: docs/tuning.md)
    proximal_mu: float = 0.01
    # server_lr and tau: 0 = the strategy's default (STRATEGY_DEFAULTS below; config.yaml names it).
    # docs/strategies.md lists every default with its source.
    server_lr: float = 0.0  # fedavgm, fedadam/yogi/adagrad, scaffold
    # fedavgm: tuned here (docs/tuning.md: 0.5 against the papers' 0.9 at server_lr=1, on validation
    # images at seed 0; 0.9 overshoots on this federation). Hsu et al. 2019 and Reddi et al. 2021 use 0.9.
    server_momentum: float = 0.5
    beta1: float = 0.9  # fedadam, fedyogi, fedadagrad (Reddi et al. 2021)
    beta2: float = 0.99  # fedadam, fedyogi (Reddi et al. 2021, section 5)
    tau: float = 0.0  # fedadam, fedyogi, fedadagrad: adaptivity
    # feddyn: alpha of the dynamic regulariser, the official code's CIFAR-100 value (Acar et al. 2021)
    feddyn_alpha: float = 0.01
    fedexp_epsilon: float = 1e-3  # fedexp: epsilon in its step size (Jhunjhunwala et al. 2023)
    trim_ratio: float = 0.1  # trimmed_mean: fraction cut at each end, per coordinate
    krum_byzantine: int = 0  # krum, multikrum, bulyan: assumed number f of Byzantine clients
    krum_select: int = 0  # multikrum: clients averaged; 0 = clients_per_round - f
    geomed_iters: int = 10  # geometric_median: at most this many smoothed Weiszfeld steps
    clip_norm: float = 0.0  # > 0 bounds the L2 norm of each client's parameter update before any rule (Sun et al. 2019)
    poc_candidates: int = 0  # power_of_choice: candidate set size d; 0 = min(num_clients, 2 * clients_per_round)
    poc_samples: int = 0  # power_of_choice: images per candidate for its loss; 0 = all (pow-d), > 0 = cpow-d
    disco_a: float = 0.5  # feddisco weighting: penalty on label discrepancy
    disco_b: float = 0.1  # feddisco weighting: offset
    # fault injection and Byzantine clients (tests, demos and robustness studies; off by default)
    fault_rate: float = 0.0  # fraction of client updates that fail, drawn from (seed, round, client)
    fault_kind: FaultKind = "raise"  # raise an exception, return NaN weights, or hang (needs round_timeout)
    attack: Attack = "none"  # what the malicious clients do, in their client update
    attack_fraction: float = 0.0  # fraction of the population that is malicious (a fixed set drawn from seed)
    attack_scale: float = 0.0  # strength; 0 = the attack's default (sign_flip 4, scale 10, gaussian 10, bn_stats 1e4)
    # Differential privacy (docs/privacy.md), off by default. dp=client: client-level DP-FedAvg
    # (McMahan et al. 2018): each update clipped to joint L2 norm dp_clip, the mean noised with
    # std dp_noise_multiplier * dp_clip / m, on the server or split across the clients (dp_noise).
    # dp=record: DP-SGD in each client (Abadi et al. 2016): each image's gradient clipped to
    # dp_clip, Poisson batches, noise std dp_noise_multiplier * dp_clip; epsilon per client.
    dp: DP = "off"
    dp_clip: float = 1.0  # C (an update's; under dp=record an image gradient's); adaptive: its round-1 value
    dp_noise_multiplier: float = 1.0  # z: noise std over the clip norm, for the whole release
    dp_noise: DPNoise = "server"
    dp_clip_quantile: float = (
        0.0  # > 0: adaptive clipping to this quantile of the update norms (Andrew et al. 2021: 0.5)
    )
    dp_clip_lr: float = 0.2  # adaptive clipping's geometric step (Andrew et al. 2021)
    dp_count_noise: float = 0.0  # std of the clipped count's noise; 0 = expected clients / 20 (Andrew et al. 2021)
    delta: float = 1e-5
    target_epsilon: float = 0.0  # > 0: the run stops before a round would take epsilon (any client's) past it
    dp_seed: int = 0  # > 0 seeds the DP noise and sampling: for tests and studies, not private
    poisson_rate: float = (
        0.0  # client_selection=poisson: each client's probability q; 0 = clients_per_round / num_clients
    )
    # Secure aggregation (SecAgg+, Bell et al. 2020, run by Flower's SecAggPlusWorkflow and
    # secaggplus_mod; docs/deployment.md), on `fedcifar federation run` only: the server unmasks
    # the weighted sum of the round's updates and never sees one of them.
    secure_aggregation: bool = False
    secagg_num_shares: int = 0  # shares of each client's mask secrets; 0 = every client of the round
    secagg_threshold: int = 0  # shares that rebuild a secret; 0 = ceil(2/3 of the shares): a third may drop
    secagg_clipping_range: float = 8.0  # each coordinate of a weighted update is clipped to +-this, then quantised
    # evaluation
    eval_every: int = 1
    eval_limit: int = 0  # > 0 evaluates on the first N test images only (smoke/tests)
    eval_batch_size: int = 0  # 0 = auto: measured on a long CPU run (fedcifar.calibrate), else 1000 (CUDA) / 250
    # > 0 holds out this many training images (class-stratified, drawn from seed) before the
    # partition, and scores the global model on them at every evaluation (val_* columns), for
    # tuning without the test set (fedcifar tune). 0 = off, the paper's setting (all 50,000 train).
    val_size: int = 0
    # execution (how, not what: fedcifar's speed knobs)
    device: Device = "auto"
    precision: Precision = "auto"
    channels_last: bool = True
    workers: int = 0  # parallel client trainers; 0 picks from the hardware
    threads_per_worker: int = 0  # torch intra-op threads; 0 picks from the hardware
    compile: Compile = "auto"  # torch.compile the client model; auto: only when the run is long enough to repay it

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict[str, Any]] = {
    # The seed paper: 64 clients, Dirichlet(0.4), 16 per round, 2 epochs, Adam 1e-3, batch 64.
    "paper": {},
    # The paper's federation with ResNet-20 (278 k parameters, a fraction of ResNet-18's FLOPs),
    # so that all 100 rounds, with the full test set after each, run on a CPU. The evaluation
    # batch is measured per machine (eval_batch_size=0): 100 ran 22 % faster than 250 on an AMX
    # CPU, and batch size made no clear difference on a Zen 4. Times: docs/results.md,
    # docs/performance.md.
    "paper-cpu": {"model": "resnet20"},
    # Same pipeline on real CIFAR-100 at a tiny scale: a check that a run works, in minutes.
    "smoke": {
        "rounds": 2,
        "clients_per_round": 2,
        "local_epochs": 1,
        "local_steps": 6,
        "eval_limit": 1000,
    },
    # `fedcifar compare`: the paper-cpu federation for 50 rounds, with the full test set after every
    # round: long enough to rank algorithms whose effect shows after round 12. Seed 1, because the
    # screens tuned on seed 0 (docs/tuning.md): results are reported on seeds not used for tuning.
    # compare-quick: 12 rounds, for a laptop (early rounds only; its time per variant is in
    # docs/results.md).
    "compare": {"model": "resnet20", "rounds": 50, "seed": 1},
    "compare-quick": {"model": "resnet20", "rounds": 12},
    # The paper-cpu federation unchanged (clients, split, sampling, local epochs, batch, rounds,
    # all 50,000 images); only the algorithm differs: the best recipe the validation screens have
    # found so far (docs/tuning.md), server momentum on the clients' mean.
    "paper-cpu-plus": {
        "model": "resnet20",
        "strategy": "fedavgm",
        "server_lr": 1.0,
        "server_momentum": 0.5,
    },
}


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def _coerce(key: str, raw: Any, typ: Any) -> Any:
    """Turn a YAML value or a ``--set`` string into the field's type, or raise ConfigError."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if raw not in choices:
            raise ConfigError(f"{key}={raw!r} is not one of: {', '.join(map(str, choices))}")
        return raw
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"true", "1", "yes", "on"}:
            return True
        if text in {"false", "0", "no", "off"}:
            return False
        raise ConfigError(f"{key}={raw!r} is not a boolean (use true or false)")
    if typ is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}={raw!r} is not an integer")
        if isinstance(raw, int):
            return raw
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not an integer") from None
    if typ is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}={raw!r} is not a number")
        try:
            return float(str(raw).strip()) if not isinstance(raw, (int, float)) else float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a number") from None
    if typ is str or (isinstance(typ, types.UnionType) and str in typing.get_args(typ)):
        return str(raw)
    raise ConfigError(f"{key}: unsupported type {typ}")  # pragma: no cover - guards new fields


def _apply(base: dict[str, Any], updates: dict[str, Any], source: str) -> dict[str, Any]:
    known = _field_types()
    out = dict(base)
    for key, raw in updates.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} in {source}")
        out[key] = _coerce(key, raw, known[key])
    return out


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Parse ``["a=1", "b=x"]`` from the command line."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return data


def build_config(
    preset: str | None = "paper",
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Preset, then file, then overrides; later sources win."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values = _apply(values, PRESETS[preset], f"preset {preset!r}")
    if file is not None:
        values = _apply(values, load_yaml(file), str(file))
    if overrides:
        values = _apply(values, overrides, "--set")
    return Config(**values)


def config_from_dict(data: dict[str, Any]) -> Config:
    return Config(**_apply({}, data, "saved config"))


def save_yaml(cfg: Config, path: Path) -> None:
    """``cfg`` as YAML; a 0 that stands for a strategy's default says which value it is."""
    lines = yaml.safe_dump(cfg.to_dict(), sort_keys=False).splitlines()
    for i, line in enumerate(lines):
        key = line.partition(":")[0]
        if key in STRATEGY_DEFAULTS and getattr(cfg, key) == 0 and cfg.strategy in STRATEGY_DEFAULTS[key]:
            lines[i] = f"{line}  # 0 = {cfg.strategy}'s default: {effective(cfg, key):g}"
    atomic_write_text(path, "\n".join(lines) + "\n")


def _validate_strategy_params(cfg: Config, need: typing.Callable[[bool, str], None]) -> None:
    k, f = cfg.clients_per_round, cfg.krum_byzantine
    need(cfg.proximal_mu >= 0, f"proximal_mu must be >= 0, got {cfg.proximal_mu}")
    need(cfg.server_lr >= 0, f"server_lr must be >= 0 (0 = the strategy's default), got {cfg.server_lr}")
    need(0 <= cfg.server_momentum < 1, f"server_momentum must be in [0, 1), got {cfg.server_momentum}")
    need(0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
    need(cfg.tau >= 0, f"tau must be >= 0 (0 = the strategy's default), got {cfg.tau}")
    need(cfg.feddyn_alpha > 0, f"feddyn_alpha must be > 0, got {cfg.feddyn_alpha}")
    need(cfg.fedexp_epsilon > 0, f"fedexp_epsilon must be > 0, got {cfg.fedexp_epsilon}")
    need(
        cfg.strategy != "feddyn" or cfg.client_weighting != "feddisco",
        "feddyn averages its clients unweighted (its server state h assumes it): client_weighting=feddisco does not apply",
    )
    need(0 <= cfg.trim_ratio < 0.5, f"trim_ratio must be in [0, 0.5), got {cfg.trim_ratio}")
    need(f >= 0, "krum_byzantine must be >= 0")
    need(
        f == 0 or 2 * f + 2 < k,
        f"krum needs clients_per_round > 2 * krum_byzantine + 2, got {k} clients for f={f}",
    )
    need(0 <= cfg.krum_select <= k - f, f"krum_select must be in [0, clients_per_round - krum_byzantine = {k - f}]")
    need(
        cfg.poc_candidates == 0 or k <= cfg.poc_candidates <= cfg.num_clients,
        f"poc_candidates must be 0 or in [clients_per_round, num_clients] = [{k}, {cfg.num_clients}]",
    )
    need(cfg.poc_samples >= 0, "poc_samples must be >= 0")
    need(
        cfg.client_selection not in ("size_weighted", "power_of_choice") or cfg.client_weighting != "num_examples",
        f"client_selection={cfg.client_selection} already samples clients by size, and its papers take a plain "
        "mean (Cho et al. 2022; Li et al. 2020): num_examples weighting would count size twice; "
        "add --set client_weighting=uniform",
    )
    need(cfg.disco_a >= 0, "disco_a must be >= 0")
    need(
        cfg.strategy != "bulyan" or k >= 4 * f + 3,
        f"bulyan needs clients_per_round >= 4 * krum_byzantine + 3, got {k} clients for f={f}",
    )
    need(cfg.geomed_iters >= 1, "geomed_iters must be >= 1")
    need(cfg.clip_norm >= 0, f"clip_norm must be >= 0 (0 = off), got {cfg.clip_norm}")


def _validate_faults(cfg: Config, need: typing.Callable[[bool, str], None]) -> None:
    need(0 <= cfg.fault_rate <= 1, f"fault_rate must be in [0, 1], got {cfg.fault_rate}")
    need(
        cfg.fault_kind != "hang" or cfg.fault_rate == 0 or cfg.round_timeout > 0,
        "fault_kind=hang needs round_timeout > 0 (a hung client would hold the round forever)",
    )
    need(0 <= cfg.attack_fraction <= 1, f"attack_fraction must be in [0, 1], got {cfg.attack_fraction}")
    need(cfg.attack_scale >= 0, f"attack_scale must be >= 0 (0 = the attack's default), got {cfg.attack_scale}")


_ADAPTIVE = ("fedadam", "fedyogi", "fedadagrad")
# Which run reads each optional key: a key set away from its default in a run that never reads it
# is named by unused_keys (``--set strategy=fedavg --set proximal_mu=0.1`` runs plain FedAvg).
USED_WHEN: dict[str, typing.Callable[[Config], bool]] = {
    "secagg_num_shares": lambda c: c.secure_aggregation,
    "secagg_threshold": lambda c: c.secure_aggregation,
    "secagg_clipping_range": lambda c: c.secure_aggregation,
    "alpha": lambda c: c.partitioner == "dirichlet",
    "shards_per_client": lambda c: c.partitioner == "shards",
    "lr_decay": lambda c: c.lr_schedule == "exponential",
    "proximal_mu": lambda c: c.strategy == "fedprox",
    "server_lr": lambda c: c.strategy in ("fedavgm", "scaffold", *_ADAPTIVE),
    "server_momentum": lambda c: c.strategy == "fedavgm",
    "beta1": lambda c: c.strategy in _ADAPTIVE,
    "beta2": lambda c: c.strategy in ("fedadam", "fedyogi"),
    "tau": lambda c: c.strategy in _ADAPTIVE,
    "feddyn_alpha": lambda c: c.strategy == "feddyn",
    "fedexp_epsilon": lambda c: c.strategy == "fedexp",
    "trim_ratio": lambda c: c.strategy == "trimmed_mean",
    "krum_byzantine": lambda c: c.strategy in ("krum", "multikrum", "bulyan"),
    "krum_select": lambda c: c.strategy == "multikrum",
    "geomed_iters": lambda c: c.strategy == "geometric_median",
    "poc_candidates": lambda c: c.client_selection == "power_of_choice",
    "poc_samples": lambda c: c.client_selection == "power_of_choice",
    "disco_a": lambda c: c.client_weighting == "feddisco",
    "disco_b": lambda c: c.client_weighting == "feddisco",
    "fault_kind": lambda c: c.fault_rate > 0,
    "poisson_rate": lambda c: c.client_selection == "poisson",
    **{k: (lambda c: c.dp != "off") for k in ("dp_clip", "dp_noise_multiplier", "delta", "dp_seed")},
    **{k: (lambda c: c.dp == "client") for k in ("dp_noise", "dp_clip_quantile")},
    **{k: (lambda c: c.dp_clip_quantile > 0) for k in ("dp_clip_lr", "dp_count_noise")},
    "attack_fraction": lambda c: c.attack != "none",
    "attack_scale": lambda c: c.attack != "none",
}


# What server_lr = 0 and tau = 0 stand for, per strategy: Reddi et al. 2021's best on CIFAR-100
# (google-research/federated, optimization/docs/hyperparameters.md). config.yaml names the value
# next to the 0 (see save_yaml); build_strategy passes it on (tests check both agree).
STRATEGY_DEFAULTS: dict[str, dict[str, float]] = {
    "server_lr": {"fedavgm": 1.0, "fedadam": 1.0, "fedyogi": 1.0, "fedadagrad": 0.1, "scaffold": 1.0},
    "tau": {"fedadam": 0.1, "fedyogi": 0.1, "fedadagrad": 0.01},
}


def effective(cfg: Config, key: str) -> float:
    """``cfg.<key>``, or the strategy's default when it is 0 (``server_lr``, ``tau``)."""
    value = getattr(cfg, key)
    return value or STRATEGY_DEFAULTS[key].get(cfg.strategy, value)


def unused_keys(cfg: Config) -> list[str]:
    """``key=value`` for every key set away from its default that this run never reads."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    return [
        f"{k}={getattr(cfg, k)}" for k, used in USED_WHEN.items() if getattr(cfg, k) != defaults[k] and not used(cfg)
    ]


def validate(cfg: Config) -> None:
    """Range and cross-field checks (names and types are checked by ``_coerce``)."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    for name, typ in _field_types().items():
        value = getattr(cfg, name)
        if typ is float and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        if typing.get_origin(typ) is Literal and value not in typing.get_args(typ):
            raise ConfigError(f"{name}={value!r} is not one of: {', '.join(map(str, typing.get_args(typ)))}")
    need(cfg.num_clients >= 1, f"num_clients must be >= 1, got {cfg.num_clients}")
    need(cfg.alpha > 0, f"alpha must be > 0, got {cfg.alpha}")
    need(cfg.min_partition_size >= 1, "min_partition_size must be >= 1")
    need(cfg.shards_per_client >= 1, "shards_per_client must be >= 1")
    need(cfg.rounds >= 1, f"rounds must be >= 1, got {cfg.rounds}")
    need(cfg.clients_per_round >= 1, "clients_per_round must be >= 1")
    need(
        cfg.clients_per_round <= cfg.num_clients,
        f"clients_per_round ({cfg.clients_per_round}) must be <= num_clients ({cfg.num_clients})",
    )
    need(
        0 <= cfg.min_fit_clients <= cfg.clients_per_round,
        f"min_fit_clients must be in [0, clients_per_round = {cfg.clients_per_round}], got {cfg.min_fit_clients}",
    )
    need(cfg.round_timeout >= 0, f"round_timeout must be >= 0 (0 = no limit), got {cfg.round_timeout}")
    need(cfg.local_epochs >= 1, "local_epochs must be >= 1")
    need(cfg.local_steps >= 0, "local_steps must be >= 0")
    need(cfg.batch_size >= 1, "batch_size must be >= 1")
    need(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}")
    need(
        cfg.momentum == 0 or cfg.client_optimizer == "sgd",
        f"momentum={cfg.momentum} is for client_optimizer=sgd (Adam has its own beta1)",
    )
    need(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {cfg.grad_clip}")
    need(cfg.fedlc_tau >= 0, f"fedlc_tau must be >= 0 (0 = off), got {cfg.fedlc_tau}")
    need(cfg.feddecorr_beta >= 0, f"feddecorr_beta must be >= 0 (0 = off), got {cfg.feddecorr_beta}")
    need(0 < cfg.lr_decay <= 1, f"lr_decay must be in (0, 1], got {cfg.lr_decay}")
    need(cfg.eval_every >= 1, "eval_every must be >= 1")
    need(cfg.eval_limit >= 0, "eval_limit must be >= 0")
    need(cfg.eval_batch_size >= 0, "eval_batch_size must be >= 0 (0 = measured on this machine)")
    need(
        0 <= cfg.val_size < 50_000,
        f"val_size must be in [0, 50000) (of CIFAR-100's training images), got {cfg.val_size}",
    )
    need(cfg.workers >= 0, "workers must be >= 0")
    need(cfg.threads_per_worker >= 0, "threads_per_worker must be >= 0")
    _validate_strategy_params(cfg, need)
    _validate_faults(cfg, need)
    _validate_privacy(cfg, need)
    _validate_secure_aggregation(cfg, need)


# The strategies that need only the mean of the updates (their classes say so with ``on_sum``).
MEAN_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def _validate_privacy(cfg: Config, need: typing.Callable[[bool, str], None]) -> None:
    need(
        0 <= cfg.poisson_rate <= 1,
        f"poisson_rate must be in [0, 1] (0 = clients_per_round / num_clients), got {cfg.poisson_rate}",
    )
    need(cfg.target_epsilon >= 0, f"target_epsilon must be >= 0 (0 = no budget), got {cfg.target_epsilon}")
    need(
        cfg.target_epsilon == 0 or cfg.dp != "off",
        "target_epsilon needs dp=client or dp=record (there is no privacy to budget)",
    )
    if cfg.dp == "off":
        return
    need(cfg.dp_clip > 0, f"dp_clip must be > 0, got {cfg.dp_clip}")
    need(
        cfg.dp_noise_multiplier > 0,
        f"dp_noise_multiplier must be > 0 (without noise there is no DP), got {cfg.dp_noise_multiplier}",
    )
    need(0 < cfg.delta < 1, f"delta must be in (0, 1), got {cfg.delta}")
    need(
        0 <= cfg.dp_clip_quantile < 1,
        f"dp_clip_quantile must be in [0, 1) (0 = fixed clipping), got {cfg.dp_clip_quantile}",
    )
    need(cfg.dp_clip_lr > 0, f"dp_clip_lr must be > 0, got {cfg.dp_clip_lr}")
    need(cfg.dp_count_noise >= 0, f"dp_count_noise must be >= 0, got {cfg.dp_count_noise}")
    need(cfg.dp_seed >= 0, f"dp_seed must be >= 0 (0 = the OS's CSPRNG), got {cfg.dp_seed}")
    if cfg.dp == "record":
        _validate_record_level(cfg, need)
        return
    why = "dp=client bounds each client's influence on an unweighted mean"
    need(
        cfg.strategy in MEAN_STRATEGIES,
        f"{why}: strategy={cfg.strategy} looks at individual updates or sends per-client state; "
        f"use one of {', '.join(MEAN_STRATEGIES)}",
    )
    need(
        cfg.client_weighting == "uniform",
        f"{why}: client_weighting={cfg.client_weighting} would scale a client's share by its data; "
        "add --set client_weighting=uniform",
    )
    need(
        cfg.client_selection in ("uniform", "poisson"),
        f"{why}: client_selection={cfg.client_selection} picks clients by their size or loss; use uniform or poisson",
    )
    need(
        cfg.norm == "group",
        f"dp=client needs norm=group: BatchNorm's running statistics (norm={cfg.norm}) are averages of the "
        "clients' images that the released model carries, and noise would make variances negative",
    )
    need(cfg.clip_norm == 0, "dp=client clips every update to dp_clip already: leave clip_norm at 0")
    need(
        cfg.min_fit_clients == 0,
        "dp=client never skips a round for its number of results (that number is not private): leave min_fit_clients at 0",
    )
    need(
        cfg.dp_noise == "server" or cfg.client_selection == "uniform",
        "dp_noise=client splits the noise over a fixed number of clients: use client_selection=uniform",
    )
    if cfg.dp_clip_quantile > 0:
        m = (cfg.poisson_rate or cfg.clients_per_round / cfg.num_clients) * cfg.num_clients
        count_std = cfg.dp_count_noise or m / 20
        need(
            2 * count_std > cfg.dp_noise_multiplier,
            f"adaptive clipping: the clipped count's noise {count_std:g} must exceed dp_noise_multiplier / 2 = "
            f"{cfg.dp_noise_multiplier / 2:g} (Andrew et al. 2021); raise dp_count_noise",
        )


def _validate_record_level(cfg: Config, need: typing.Callable[[bool, str], None]) -> None:
    """dp=record: everything a client sends must come from per-image clipped, noised gradients."""
    why = "dp=record bounds each image's gradient"
    need(
        cfg.norm == "group",
        f"{why}: BatchNorm (norm={cfg.norm}) mixes the images of a batch, so no image has a gradient "
        "of its own; use norm=group",
    )
    need(cfg.fedlc_tau == 0, f"{why}: FedLC's loss uses the client's label counts, which one image changes")
    need(cfg.feddecorr_beta == 0, f"{why}: FedDecorr's loss couples the images of a batch")
    need(
        cfg.client_selection != "power_of_choice",
        f"{why}: power_of_choice asks each candidate for its loss on its data, an unaccounted release",
    )
    need(
        cfg.client_weighting != "feddisco",
        f"{why}: FedDisco weights by the clients' label histograms, which are not private",
    )


def _validate_secure_aggregation(cfg: Config, need: typing.Callable[[bool, str], None]) -> None:
    """Secure aggregation: the server gets the sum of the updates and nothing that needs one of them."""
    if not cfg.secure_aggregation:
        return
    why = "secure_aggregation: the server sees only the sum of the round's updates"
    need(
        cfg.strategy in MEAN_STRATEGIES,
        f"{why}; strategy={cfg.strategy} needs each client's update or per-client state: "
        f"use one of {', '.join(MEAN_STRATEGIES)}",
    )
    need(
        cfg.client_selection != "power_of_choice",
        f"{why}; power_of_choice ranks clients by their individual losses",
    )
    need(cfg.clip_norm == 0, f"{why}; it cannot clip an update it never holds (clip_norm): leave it at 0")
    need(
        cfg.dp_clip_quantile == 0,
        f"{why}; adaptive clipping needs each client's clipped bit: use fixed clipping (dp_clip_quantile=0)",
    )
    need(
        cfg.clients_per_round >= 3,
        f"{why}: with {cfg.clients_per_round} clients a round, one learns the other's update from the sum; "
        "use clients_per_round >= 3",
    )
    shares = cfg.secagg_num_shares or cfg.clients_per_round
    need(
        cfg.secagg_num_shares == 0 or 3 <= cfg.secagg_num_shares <= cfg.clients_per_round,
        f"secagg_num_shares must be 0 (every client of the round) or in [3, clients_per_round], "
        f"got {cfg.secagg_num_shares}",
    )
    need(
        cfg.secagg_threshold == 0 or 2 <= cfg.secagg_threshold < shares,
        f"secagg_threshold must be 0 (2/3 of the shares) or in [2, {shares - 1}] (below the {shares} shares), "
        f"got {cfg.secagg_threshold}",
    )
    need(cfg.secagg_clipping_range > 0, f"secagg_clipping_range must be > 0, got {cfg.secagg_clipping_range}")
