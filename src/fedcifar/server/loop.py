"""The one round loop: select -> configure -> dispatch -> aggregate -> evaluate -> record.

It drives a :class:`~fedcifar.server.backend.Backend` (which runs the clients: a local
thread pool, or machines on a network) and writes through a
:class:`~fedcifar.track.rundir.RunDir`. Selection, weighting, aggregation, failure
handling, metrics, export, checkpoints and exact resume live here, once, for every backend.

A client that fails (its backend reports a :class:`~fedcifar.messages.ClientFailure`, or its
result does not pass :mod:`fedcifar.server.checks`) is recorded in the round's row and left
out. A round with fewer results than ``min_fit_clients``, or whose aggregate is not finite, is
skipped: the global weights and the strategy's state stay as they were, and the row says why.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from fedcifar.client.train import read_weights
from fedcifar.config import Config, ConfigError, unused_keys
from fedcifar.federation import client_instructions, malicious_clients, model_spec
from fedcifar.messages import ClientFailure, ClientResult, Weights
from fedcifar.privacy.noise import secure_rng
from fedcifar.server.backend import Backend, FitTask, HoldsClientState, SumsSecurely, Validates, largest_first
from fedcifar.server.checks import clip_update, non_finite, result_problem, update_norm
from fedcifar.server.rows import summary_line, test_row, train_row, val_row
from fedcifar.strategy.aggregate import median_statistics, statistics_of
from fedcifar.strategy.base import FitRound, Strategy
from fedcifar.strategy.population import Population
from fedcifar.strategy.registry import SELECTORS, build_strategy
from fedcifar.strategy.selection import SelectionContext
from fedcifar.track.rundir import RunDir

RoundCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class Server:
    """The server side of a federation: config, strategy, the clients' backend and what it knows of them."""

    cfg: Config
    strategy: Strategy
    backend: Backend
    population: Population

    @property
    def min_fit_clients(self) -> int:
        """Fewer results skip the round. Never under client-level DP (the count is not private); one under Poisson."""
        cfg = self.cfg
        if cfg.dp == "client":
            return 0
        return cfg.min_fit_clients or (1 if cfg.client_selection == "poisson" else cfg.clients_per_round)


# Where checkpoints written before clients held their own state kept it (strategy.store.*,
# strategy.fedbn.*); such state is not restored.
LEGACY_CLIENT_STATE = ("store.", "fedbn.")


def select_clients(server: Server, server_round: int, global_weights: Weights) -> list[int]:
    """The round's clients, from the configured selector (seeded by (seed, round)).

    Under client-level DP the draw is secret (``secure_rng``: os.urandom, or ``dp_seed``), since the
    accountant's amplification by sampling assumes nobody can predict it from the run's seed.
    """
    cfg = server.cfg
    losses = partial(server.backend.client_losses, server_round, global_weights)
    rng = secure_rng(cfg.dp_seed, server_round) if cfg.dp == "client" else None
    ctx = SelectionContext(
        server_round,
        cfg.seed,
        cfg.clients_per_round,
        server.population.sizes,
        cfg.poc_candidates,
        losses,
        cfg.poisson_rate,
        rng,
    )
    return SELECTORS[cfg.client_selection](ctx)


def screen_result(
    cfg: Config, global_weights: Weights, population: Population, result: ClientResult
) -> ClientResult | ClientFailure:
    """A result the strategy may see (its update clipped to ``clip_norm``), or why it is refused.

    Its ``num_examples`` must be the size the server registered for the client (the
    population): a result cannot claim more weight in the mean than its client has data.
    """
    problem = result_problem(result, global_weights)
    registered = int(population.sizes[result.client_id])
    if problem is None and result.num_examples != registered:
        problem = f"reported {result.num_examples} training examples, {registered} are registered for it"
    if problem is not None:
        return ClientFailure(result.client_id, problem)
    norm = update_norm(global_weights, result.weights)
    result.metrics["update_norm"] = norm
    if cfg.clip_norm and norm > cfg.clip_norm:
        result.weights = clip_update(global_weights, result.weights, cfg.clip_norm, norm)
        result.metrics["clipped"] = 1.0
    return result


def fold_order(clients: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """The order results reach the strategy: largest registered client first, ties in selection order."""
    return [clients[i] for i in largest_first([int(sizes[c]) for c in clients])]


class _Arrivals:
    """Hands screened results to the strategy in ``order``; keeps their metrics and the failures.

    Results are screened and counted as they arrive, but one that lands before a client earlier
    in ``order`` is held until that client's result or failure is in. So the strategy folds the
    same results in the same order whatever the arrival order (on Flower: who finished first),
    and float sums, ties and tie-breaks come out the same on both backends. The cost: on Flower,
    up to ``clients_per_round - 1`` results held at once, each one model's weights.
    """

    def __init__(
        self,
        fit_round: FitRound,
        order: Sequence[int],
        on_progress: Callable[[int, int, int, int], None],
        screen: Callable[[ClientResult], ClientResult | ClientFailure],
        keep_statistics: bool = False,
    ):
        self.keep_statistics = keep_statistics
        self.fit_round = fit_round
        self.order = list(order)
        self.screen = screen
        self.total = len(self.order)
        self.statistics: list[Weights] = []  # each kept result's running statistics, with keep_statistics
        self.kept: list[ClientResult] = []  # in fold order
        self.on_progress = on_progress
        self.arrived = 0
        self.images = 0
        self.waited = 0.0  # seconds spent waiting for the backend
        self.exhausted = False

    def __call__(self, items: Iterator[ClientResult | ClientFailure]) -> Iterator[ClientResult]:
        self.on_progress(0, 0, self.total, 0)
        held: dict[int, ClientResult] = {}
        done: set[int] = set()  # clients whose result or failure is in
        position = 0
        while True:
            t0 = time.perf_counter()
            item = next(items, None)
            self.waited += time.perf_counter() - t0
            if item is None:
                break
            if isinstance(item, ClientResult):
                item = self.screen(item)
            done.add(item.client_id)
            if isinstance(item, ClientFailure):
                self.fit_round.failures.append(item)
            else:
                held[item.client_id] = item
                self.arrived += 1
                self.images += int(item.metrics.get("images", 0))
            self.on_progress(self.arrived, len(self.fit_round.failures), self.total, self.images)
            while position < len(self.order) and self.order[position] in done:
                if (result := held.pop(self.order[position], None)) is not None:
                    yield self._release(result)
                position += 1
        for result in held.values():  # a client the order did not name: after the others
            yield self._release(result)
        self.exhausted = True

    def _release(self, result: ClientResult) -> ClientResult:
        self.kept.append(result.without_weights())
        if self.keep_statistics:
            self.statistics.append(statistics_of(result.weights))
        return result


def fit_round(
    server: Server, server_round: int, clients: Sequence[int], global_weights: Weights, on_progress
) -> tuple[Weights, dict[str, Any]]:
    """Train ``clients`` through the backend and aggregate what arrives: new weights and the row."""
    t0 = time.perf_counter()
    strategy = server.strategy
    before = strategy.state_dict()  # restored if the round is skipped
    extra = strategy.configure_fit(server_round, list(clients))
    tasks = [FitTask(c, client_instructions(server.cfg, server_round, c, extra.get(c, {}))) for c in clients]
    factors = strategy.weighting.for_round(clients, server.population)
    fit = FitRound(server_round, global_weights, factors)
    aggregate = _secure_aggregate if server.cfg.secure_aggregation else _aggregate
    new_weights, kept, waited = aggregate(server, fit, tasks, on_progress)
    skipped = ""
    if len(kept) < server.min_fit_clients:
        skipped = f"{len(kept)} of {len(tasks)} clients returned, min_fit_clients is {server.min_fit_clients}"
    elif (bad := non_finite(new_weights)) is not None:
        skipped = f"the aggregate has non-finite weights in {bad!r}"
    if skipped:
        strategy.load_state_dict(*before)
        new_weights = global_weights
    seconds = time.perf_counter() - t0
    row = train_row(server_round, kept, fit.failures, seconds, skipped)
    if not skipped:
        row.update(fit.metrics)
    row["malicious"] = " ".join(str(c) for c in clients if c in malicious_clients(server.cfg))
    broadcast = sum(r.metrics.get("setup_seconds", 0.0) for r in kept) / max(server.backend.workers, 1)
    row["overhead_seconds"] = seconds - waited + broadcast
    return new_weights, row


def _aggregate(
    server: Server, fit: FitRound, tasks: Sequence[FitTask], on_progress
) -> tuple[Weights, list[ClientResult], float]:
    """The strategy folds each screened result as it arrives: (new weights, kept results, seconds waited)."""
    g = fit.global_weights
    # Under clip_norm the statistics, which no norm bounds, take the clients' median (a few KB each).
    screen = partial(screen_result, server.cfg, g, server.population)
    order = fold_order([t.client_id for t in tasks], server.population.sizes)
    arrivals = _Arrivals(fit, order, on_progress, screen, keep_statistics=server.cfg.clip_norm > 0)
    new_weights = dict(g)
    try:
        new_weights = server.strategy.aggregate_fit(fit, arrivals(server.backend.fit(fit.server_round, g, tasks)))
        if arrivals.statistics:
            new_weights = {**new_weights, **median_statistics(arrivals.statistics, g)}
    except ValueError:  # the strategy found nothing to aggregate: a skipped round, if too few arrived
        if not arrivals.exhausted or len(arrivals.kept) >= server.min_fit_clients:
            raise
    return new_weights, arrivals.kept, arrivals.waited


def _secure_aggregate(
    server: Server, fit: FitRound, tasks: Sequence[FitTask], on_progress
) -> tuple[Weights, list[ClientResult], float]:
    """Secure aggregation: the strategy gets the sum of the round's updates, and never one of them.

    The server cannot screen what it never sees: a client's update is neither checked nor clipped
    here (config.py refuses clip_norm), only the aggregate's finiteness is.
    """
    backend = server.backend
    if not isinstance(backend, SumsSecurely):
        raise ConfigError(
            "secure_aggregation=true runs on Flower's Deployment Engine only: use fedcifar federation run"
        )
    factors = fit.factors or {t.client_id: float(server.population.sizes[t.client_id]) for t in tasks}
    on_progress(0, 0, len(tasks), 0)
    t0 = time.perf_counter()
    secure, failures, stages = backend.fit_sum(fit.server_round, fit.global_weights, tasks, factors)
    waited = time.perf_counter() - t0
    fit.failures.extend(failures)
    order = fold_order([r.client_id for r in secure.results], server.population.sizes)
    kept = sorted(secure.results, key=lambda r: order.index(r.client_id))
    on_progress(len(kept), len(failures), len(tasks), sum(int(r.metrics.get("images", 0)) for r in kept))
    new_weights = server.strategy.aggregate_sum(fit, secure) if secure.count else dict(fit.global_weights)
    fit.metrics.update({f"secagg_{stage}_seconds": s for stage, s in stages.items()})
    fit.metrics["secagg_clipped"] = sum(r.metrics.get("secagg_clipped", 0.0) for r in kept)  # coordinates at ±c
    fit.metrics["secagg_mask_seconds"] = max((r.metrics.get("secagg_mask_seconds", 0.0) for r in kept), default=0.0)
    return new_weights, kept, waited


def run_rounds(
    server: Server,
    run: RunDir,
    global_weights: Weights,
    start_round: int = 0,
    *,
    progress: bool = True,
    callbacks: Sequence[RoundCallback] = (),
) -> pd.DataFrame:
    """Rounds ``start_round + 1`` to ``cfg.rounds``; returns the metrics of the whole run."""
    cfg = server.cfg
    rounds = range(start_round + 1, cfg.rounds + 1)
    bar = tqdm(rounds, initial=start_round, total=cfg.rounds, desc="rounds", unit="round", disable=not progress)
    for server_round in bar:
        if reason := server.strategy.stop_reason(server_round):
            tqdm.write(f"fedcifar: {reason}", file=sys.stderr)
            break
        t0 = time.perf_counter()
        clients = select_clients(server, server_round, global_weights)
        report = partial(run.progress, server_round)
        global_weights, row = fit_round(server, server_round, clients, global_weights, report)
        if server_round % cfg.eval_every == 0 or server_round == cfg.rounds:
            t_eval = time.perf_counter()
            row.update(test_row(server.backend.evaluate(global_weights), server.population.label_counts))
            if cfg.val_size:
                row.update(val_row(server.backend.validate(global_weights)))
            row["eval_seconds"] = time.perf_counter() - t_eval
        t_book = time.perf_counter()
        row["round_seconds"] = t_book - t0  # up to the writes below
        clients = server.backend.state_dict() if isinstance(server.backend, HoldsClientState) else {}
        run.record(row, global_weights, server.strategy.state_dict(), client_state=clients)
        if progress:
            tqdm.write(summary_line(row, cfg.rounds))
        # The writes after the row: not in metrics.csv, but callbacks (the benchmark) see them.
        seen = {**row, "bookkeeping_seconds": time.perf_counter() - t_book}
        for callback in callbacks:
            callback(server_round, seen)
    bar.close()
    return run.frame


def run_federation(
    cfg: Config,
    run_dir: str | Path,
    backend: Backend,
    population: Population,
    *,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    callbacks: Sequence[RoundCallback] = (),
    tensorboard_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Train ``cfg.rounds`` rounds into ``run_dir`` through ``backend`` (continuing it if ``resume``).

    Whatever runs the clients, this is the whole server: the run directory, the strategy and
    its resumed state, the initial model (from ``cfg.seed``) and the round loop.
    ``tensorboard_dir`` overrides where TensorBoard's copy of the metrics goes.
    """
    if cfg.secure_aggregation and not isinstance(backend, SumsSecurely):
        raise ConfigError(
            "secure_aggregation=true runs on Flower's Deployment Engine only: use fedcifar federation run"
        )
    if cfg.val_size and not isinstance(backend, Validates):
        raise ConfigError(f"val_size={cfg.val_size}: this backend holds no validation images; use the simulator")
    strategy = build_strategy(cfg)
    if unused := unused_keys(cfg):
        tqdm.write(f"fedcifar: warning: this run ({cfg.strategy}) does not read {', '.join(unused)}", file=sys.stderr)
    if cfg.dp != "off" and cfg.dp_seed:
        tqdm.write(
            f"fedcifar: warning: dp_seed={cfg.dp_seed} seeds the DP noise and sampling: reproducible, and not private "
            "against anyone who knows the seed (for tests and studies only)",
            file=sys.stderr,
        )
    run, resumed = RunDir.open(run_dir, cfg, model_spec(cfg).to_dict(), resume, tensorboard_dir)
    if resumed.round:
        weights = {k: v.to(device) for k, v in resumed.weights.items()}
        strategy.load_state_dict({k: v.to(device) for k, v in resumed.strategy_tensors.items()}, resumed.strategy_meta)
        if isinstance(backend, HoldsClientState):  # under Flower the nodes start a new run empty
            backend.load_state_dict(resumed.client_tensors)
        if any(k.startswith(LEGACY_CLIENT_STATE) for k in resumed.strategy_tensors):
            tqdm.write(
                f"fedcifar: {run_dir} was checkpointed when the server held the clients' SCAFFOLD/FedBN "
                "state; every client's state restarts empty, so this resume is not exact",
                file=sys.stderr,
            )
    else:
        weights = read_weights(model_spec(cfg).build(seed=cfg.seed).to(device))
    strategy.setup(population)
    server = Server(cfg, strategy, backend, population)
    return run_rounds(server, run, weights, resumed.round, progress=progress, callbacks=callbacks)
