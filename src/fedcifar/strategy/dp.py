"""Client-level DP-FedAvg (McMahan et al. 2018) around a mean-based strategy: ``dp=client``;
and the server's side of record-level DP-SGD (``dp=record``, :class:`RecordLevelDP`).

A wrapper, as FedBN is. Each round it tells the clients the clip norm C_t (and, with
``dp_noise=client``, their share of the noise); the clients clip (and noise) their updates in
the local update (:func:`fedcifar.privacy.mechanism.privatize_update`), on every backend. Here
the server re-clips each update to C_t (a client that did not clip cannot widen the
sensitivity; with client noise this is not possible and the clients' clipping is trusted),
sums them, adds the central noise N(0, (z_Δ C_t)²) (``dp_noise=server``), divides by the
expected number of clients m and hands the wrapped strategy one result, w + Δ̄: FedAvg adopts
it, FedAvgM/FedAdam/... take it as their pseudo-gradient (post-processing, no privacy cost).

Adaptive clipping (``dp_clip_quantile`` γ > 0, Andrew et al. 2021) moves C_t from the noised
count of unclipped updates. The noise of round t is always z_Δ · C_t, the norm that round's
clients clipped with; C_{t+1} is only used from round t+1 on.

The accountant (:mod:`fedcifar.privacy.accountant`) composes one Gaussian release per round
with the noise multiplier that was actually added: z, or under client noise z·sqrt(n/m) when
only n of the m clients delivered (their shares of the noise are missing). ``stop_reason``
refuses a round whose release would take ε past ``target_epsilon``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedcifar.messages import ClientInstructions, ClientResult, Weights
from fedcifar.privacy import mechanism as mech
from fedcifar.privacy.accountant import Sampling, add_release, epsilon
from fedcifar.privacy.dpsgd import RecordPlan, ledger_epsilon
from fedcifar.privacy.noise import noise_source
from fedcifar.strategy.base import FitConfig, FitRound, SecureSum, Strategy, add_to_config
from fedcifar.strategy.population import Population


@dataclass(frozen=True)
class DPSettings:
    clip: float  # C at round 1
    noise_multiplier: float  # z: of the whole release (update and clipped count together)
    client_noise: bool  # each client adds its share of the noise (dp_noise=client)
    sampling: Sampling  # clients: who takes part in a round, for the accountant
    delta: float
    target_epsilon: float = 0.0  # 0 = no budget
    quantile: float = 0.0  # γ; 0 = fixed clipping
    clip_lr: float = 0.2  # η_C
    count_std: float = 0.0  # σ_b (adaptive only)
    dp_seed: int = 0  # 0 = the OS's CSPRNG

    @property
    def expected_clients(self) -> float:
        s = self.sampling
        return s.poisson_rate * s.population if s.poisson_rate > 0 else float(min(s.size, s.population))

    @property
    def update_multiplier(self) -> float:
        return mech.update_noise_multiplier(self.noise_multiplier, self.count_std if self.quantile > 0 else 0.0)


def dp_settings(cfg) -> DPSettings:
    """The DP mechanism a config asks for (``dp=client``)."""
    q = cfg.poisson_rate or cfg.clients_per_round / cfg.num_clients
    sampling = Sampling(cfg.num_clients, cfg.clients_per_round, q if cfg.client_selection == "poisson" else 0.0)
    m = q * cfg.num_clients if cfg.client_selection == "poisson" else cfg.clients_per_round
    return DPSettings(
        clip=cfg.dp_clip,
        noise_multiplier=cfg.dp_noise_multiplier,
        client_noise=cfg.dp_noise == "client",
        sampling=sampling,
        delta=cfg.delta,
        target_epsilon=cfg.target_epsilon,
        quantile=cfg.dp_clip_quantile,
        clip_lr=cfg.dp_clip_lr,
        count_std=cfg.dp_count_noise or m / 20,
        dp_seed=cfg.dp_seed,
    )


class DPFedAvg(Strategy):
    def __init__(self, inner: Strategy, settings: DPSettings) -> None:
        super().__init__(inner.weighting)
        self.inner = inner
        self.settings = settings
        self.clip = settings.clip  # C_t
        self.releases: list[list[float]] = []  # [(noise multiplier, count)], composed so far
        self._eps_cache: dict[str, float] = {}

    def setup(self, population: Population) -> None:
        super().setup(population)
        self.inner.setup(population)

    def epsilon(self, releases: list[list[float]] | None = None) -> float:
        releases = self.releases if releases is None else releases
        key = repr(releases)
        if key not in self._eps_cache:
            self._eps_cache[key] = epsilon(self.settings.sampling, [tuple(r) for r in releases], self.settings.delta)
        return self._eps_cache[key]

    def stop_reason(self, server_round: int) -> str:
        s = self.settings
        if not s.target_epsilon:
            return self.inner.stop_reason(server_round)
        after = self.epsilon(add_release(self.releases, s.noise_multiplier))
        if after > s.target_epsilon:
            return (
                f"privacy budget: round {server_round} would reach epsilon={after:.3g} > target_epsilon="
                f"{s.target_epsilon:g} (delta={s.delta:g}); stopped after round {server_round - 1}"
            )
        return self.inner.stop_reason(server_round)

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        s = self.settings
        m = s.expected_clients
        fields: dict[str, Any] = {"dp_clip": self.clip, "dp_seed": s.dp_seed}
        if s.client_noise:
            fields["dp_noise_std"] = s.update_multiplier * self.clip / math.sqrt(m)
            fields["dp_count_std"] = s.count_std / math.sqrt(m) if s.quantile > 0 else 0.0
        return add_to_config(self.inner.configure_fit(server_round, client_ids), client_ids, **fields)

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        s = self.settings
        g = fit_round.global_weights
        total: Weights = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in g.items() if v.is_floating_point()}
        below, arrived = 0.0, 0
        for res in results:
            delta = mech.update_of(g, res.weights)
            reported = float(res.metrics.get("dp_below_clip", -0.5))
            if not s.client_noise:  # trusted server: bound each update and count whatever the client did
                delta, _ = mech.clipped(delta, self.clip)
                reported = min(max(reported, -0.5), 0.5)
            for k, acc in total.items():
                acc.add_(delta[k].to(acc.device))
            below += reported
            arrived += 1
        return self._release(fit_round, total, below, arrived)

    @property
    def on_sum(self) -> bool:
        return self.inner.on_sum

    def aggregate_sum(self, fit_round: FitRound, secure: SecureSum) -> Weights:
        """The sum of the clients' clipped (under client noise: noised) updates, unmasked as a whole.

        The server cannot re-clip what it never sees: the clients' clipping is trusted, as with
        client noise. Adaptive clipping is refused with secure aggregation (config.py).
        """
        return self._release(fit_round, dict(secure.deltas), 0.0, secure.count)

    def _release(self, fit_round: FitRound, total: Weights, below: float, arrived: int) -> Weights:
        """Noise the sum of ``arrived`` clipped updates (unless the clients did), account for it, step."""
        s = self.settings
        g = fit_round.global_weights
        m = s.expected_clients
        if s.client_noise:
            achieved = s.noise_multiplier * math.sqrt(arrived / m) if arrived else None
        else:
            normal = noise_source(s.dp_seed, fit_round.server_round, 0x5E)
            total = mech.add_noise(total, s.update_multiplier * self.clip, normal)
            if s.quantile > 0:
                below += s.count_std * float(normal((1,))[0])
            achieved = s.noise_multiplier
        if achieved is not None:  # nobody delivered under client noise: nothing about anyone was released
            self.releases = add_release(self.releases, achieved)
        mean = mech.apply_delta(g, {k: v / m for k, v in total.items()})
        fit_round.metrics.update(
            dp_epsilon=self.epsilon(),
            dp_clip=self.clip,
            dp_noise_std=(achieved or 0.0) / s.noise_multiplier * s.update_multiplier * self.clip / m,
        )
        if s.quantile > 0:
            unclipped = below / m + 0.5
            fit_round.metrics["dp_unclipped"] = unclipped
            self.clip = mech.next_clip(self.clip, unclipped, s.quantile, s.clip_lr)
        inner_round = dataclasses.replace(fit_round, factors=None)
        return self.inner.aggregate_fit(inner_round, [ClientResult(-1, mean, 1)])

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        tensors, meta = self.inner.state_dict()
        return tensors, {**meta, "dp": {"clip": self.clip, "releases": self.releases}}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        meta = dict(meta)
        dp = meta.pop("dp", None)
        if dp is not None:
            self.clip = float(dp["clip"])
            self.releases = [[float(z), int(n)] for z, n in dp["releases"]]
        self.inner.load_state_dict(tensors, meta)


@dataclass(frozen=True)
class RecordSettings:
    """Record-level DP-SGD (``dp=record``): what every client is told, and the budget per client."""

    clip: float  # C of each image's gradient
    noise_multiplier: float  # σ
    delta: float
    target_epsilon: float = 0.0  # 0 = no budget
    dp_seed: int = 0
    batch_size: int = 64
    epochs: int = 2
    steps: int = 0

    def plan(self, n: int) -> RecordPlan:
        """The round a client of ``n`` images runs (the same plan the client makes itself)."""
        fields = dict(seed=0, batch_size=self.batch_size, epochs=self.epochs, steps=self.steps)
        return RecordPlan.of(n, ClientInstructions(**fields, dp_sample_noise=self.noise_multiplier))


class RecordLevelDP(Strategy):
    """Record-level DP around any strategy: each client runs DP-SGD and keeps its own ledger.

    The server aggregates as the wrapped strategy does (a client's output is already private;
    whatever the server computes from it is post-processing). It tells each client the clip, the
    noise and the budget, and it plans: the server knows every client's size and which rounds it
    was picked for, so it mirrors each ledger and ``stop_reason`` stops the run before a round
    after which any client could be past ``target_epsilon``. The clients' own ledgers are the
    guarantee (a client refuses a round past its budget); the mirror only keeps the run from
    asking. ``dp_epsilon`` in the round's row is the worst client's ε so far, from the clients'
    own reports.
    """

    def __init__(self, inner: Strategy, settings: RecordSettings) -> None:
        super().__init__(inner.weighting)
        self.inner = inner
        self.settings = settings
        self.rounds_trained: dict[int, int] = {}  # client -> rounds it was picked for (the mirror)
        self.reported: dict[int, float] = {}  # client -> its latest reported ε
        self._eps_cache: dict[tuple[int, int], float] = {}

    def setup(self, population: Population) -> None:
        super().setup(population)
        self.inner.setup(population)

    def client_epsilon(self, n: int, rounds: int) -> float:
        """ε of a client of ``n`` images after ``rounds`` rounds (the plan is the same every round)."""
        key = (n, rounds)
        if key not in self._eps_cache:
            self._eps_cache[key] = ledger_epsilon([self.settings.plan(n).row()] * rounds, self.settings.delta)
        return self._eps_cache[key]

    def stop_reason(self, server_round: int) -> str:
        s = self.settings
        if s.target_epsilon and self.population is not None:
            sizes = self.population.sizes
            worst, client = max(
                (self.client_epsilon(int(sizes[c]), self.rounds_trained.get(c, 0) + 1), c) for c in range(len(sizes))
            )
            if worst > s.target_epsilon:
                return (
                    f"privacy budget: in round {server_round} client {client} could reach epsilon={worst:.3g} > "
                    f"target_epsilon={s.target_epsilon:g} (delta={s.delta:g}); stopped after round {server_round - 1}"
                )
        return self.inner.stop_reason(server_round)

    def configure_fit(self, server_round: int, client_ids: list[int]) -> FitConfig:
        s = self.settings
        for c in client_ids:
            self.rounds_trained[c] = self.rounds_trained.get(c, 0) + 1
        fields = dict(
            dp_sample_clip=s.clip,
            dp_sample_noise=s.noise_multiplier,
            dp_delta=s.delta,
            dp_budget=s.target_epsilon,
            dp_seed=s.dp_seed,
        )
        return add_to_config(self.inner.configure_fit(server_round, client_ids), client_ids, **fields)

    def aggregate_fit(self, fit_round: FitRound, results: Iterable[ClientResult]) -> Weights:
        def noted(items: Iterable[ClientResult]) -> Iterable[ClientResult]:
            for res in items:
                if "dp_epsilon" in res.metrics:
                    self.reported[res.client_id] = float(res.metrics["dp_epsilon"])
                yield res

        weights = self.inner.aggregate_fit(fit_round, noted(results))
        fit_round.metrics["dp_epsilon"] = max(self.reported.values(), default=0.0)
        return weights

    @property
    def on_sum(self) -> bool:
        return self.inner.on_sum

    def aggregate_sum(self, fit_round: FitRound, secure: SecureSum) -> Weights:
        for res in secure.results:  # each client's ε travels in the clear beside its masked vector
            if "dp_epsilon" in res.metrics:
                self.reported[res.client_id] = float(res.metrics["dp_epsilon"])
        weights = self.inner.aggregate_sum(fit_round, secure)
        fit_round.metrics["dp_epsilon"] = max(self.reported.values(), default=0.0)
        return weights

    def state_dict(self) -> tuple[Weights, dict[str, Any]]:
        tensors, meta = self.inner.state_dict()
        record = {"rounds_trained": dict(self.rounds_trained), "reported": dict(self.reported)}
        return tensors, {**meta, "dp_record": record}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        meta = dict(meta)
        record = meta.pop("dp_record", None)
        if record is not None:
            self.rounds_trained = {int(c): int(n) for c, n in record["rounds_trained"].items()}
            self.reported = {int(c): float(e) for c, e in record["reported"].items()}
        self.inner.load_state_dict(tensors, meta)


def record_settings(cfg) -> RecordSettings:
    """The record-level DP-SGD a config asks for (``dp=record``)."""
    return RecordSettings(
        clip=cfg.dp_clip,
        noise_multiplier=cfg.dp_noise_multiplier,
        delta=cfg.delta,
        target_epsilon=cfg.target_epsilon,
        dp_seed=cfg.dp_seed,
        batch_size=cfg.batch_size,
        epochs=cfg.local_epochs,
        steps=cfg.local_steps,
    )
