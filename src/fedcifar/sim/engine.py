"""The one round loop of a simulated federation.

Each round: select clients, train them in parallel on the model pool, let the strategy fold
their results into new global weights, evaluate, then record metrics, export the model and
write the resume checkpoint (last, so it marks the round complete).

Randomness: no generator carries hidden state between rounds. The partition, each round's
selection and each client's shuffling/augmentation are drawn from generators derived from
(seed, round, client), so a resumed run redraws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fedcifar.client.train import (
    ClientInstructions,
    ClientResult,
    EvalCounts,
    eval_counts,
    evaluate,
    read_weights,
    train_client,
)
from fedcifar.config import Config, config_from_dict, save_yaml
from fedcifar.data.cifar100 import Cifar100
from fedcifar.data.partition import Partition, class_counts, make_partition
from fedcifar.fairness import client_accuracies, fairness_summary
from fedcifar.model import ModelSpec
from fedcifar.sim.executor import ModelPool, largest_first
from fedcifar.sim.runtime import Runtime, resolve_runtime
from fedcifar.strategy.population import Population
from fedcifar.strategy.registry import SELECTORS, build_strategy
from fedcifar.strategy.selection import SelectionContext
from fedcifar.track.checkpoint import CheckpointError, export_global, load_checkpoint, save_checkpoint
from fedcifar.track.metrics import MetricsLog
from fedcifar.track.plots import plot_curves, plot_partition

RoundCallback = Callable[[int, dict[str, Any]], None]


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)[0])


def write_partition(partition: Partition, labels: np.ndarray, out_dir: Path, title: str = "") -> np.ndarray:
    """Write ``partition.csv`` (clients x classes counts) and ``partition.png``."""
    from fedcifar.track.io import atomic_path

    counts = class_counts(labels, partition, num_classes=100)
    frame = pd.DataFrame(counts, columns=[f"class_{c}" for c in range(counts.shape[1])])
    frame.insert(0, "client", range(len(partition)))
    frame.insert(1, "total", counts.sum(axis=1))
    with atomic_path(out_dir / "partition.csv") as tmp:
        frame.to_csv(tmp, index=False)
    plot_partition(counts, out_dir / "partition.png", title)
    return counts


def model_spec(cfg: Config) -> ModelSpec:
    return ModelSpec(cfg.model, cfg.norm, 100)


def partition_for(cfg: Config, labels: np.ndarray) -> Partition:
    return make_partition(
        labels,
        cfg.partitioner,
        cfg.num_clients,
        cfg.seed,
        alpha=cfg.alpha,
        min_partition_size=cfg.min_partition_size,
        shards_per_client=cfg.shards_per_client,
    )


@dataclass
class Federation:
    """What a run needs in memory: data on the device, partitions as index tensors, runtime."""

    cfg: Config
    data: Cifar100
    client_indices: list[torch.Tensor]
    runtime: Runtime

    def client_data(self, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.client_indices[client_id]
        return self.data.train_x[idx], self.data.train_y[idx]

    def instructions(self, server_round: int, client_id: int, extra: dict[str, Any]) -> ClientInstructions:
        cfg = self.cfg
        return ClientInstructions(
            seed=client_seed(cfg.seed, server_round, client_id),
            epochs=cfg.local_epochs,
            steps=cfg.local_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            augment=cfg.augment,
            optimizer=cfg.client_optimizer,
            **extra,
        )


def _fit_task(fed: Federation, global_weights, client_id: int, instr: ClientInstructions, model) -> ClientResult:
    images, labels = fed.client_data(client_id)
    return train_client(model, global_weights, images, labels, instr, fed.runtime, client_id)


def evaluate_parallel(
    pool: ModelPool, weights, images: torch.Tensor, labels: torch.Tensor, runtime: Runtime, batch_size: int
) -> EvalCounts:
    """Evaluate ``weights`` with every worker on a contiguous shard of the test set."""
    n = len(labels)
    bounds = [(n * i // pool.workers, n * (i + 1) // pool.workers) for i in range(pool.workers)]
    tasks = [
        partial(
            eval_counts, weights=weights, images=images[a:b], labels=labels[a:b], runtime=runtime, batch_size=batch_size
        )
        for a, b in bounds
        if b > a
    ]
    return functools.reduce(operator.add, pool.map(tasks))


def test_row(counts: EvalCounts, label_counts: np.ndarray) -> dict[str, float]:
    """The round's test columns: loss, top-1, top-5 and the per-client fairness summary."""
    scores = counts.scores()
    row = {"test_loss": scores["loss"], "test_acc": scores["acc"], "test_top5": scores["top5"]}
    row.update(fairness_summary(client_accuracies(label_counts, np.array(counts.class_accuracy()))))
    return row


def _selection_context(fed: Federation, pool: ModelPool, population, global_weights, server_round: int):
    """What a selector may use: sizes, and the candidates' losses on the current global model."""
    cfg = fed.cfg
    return SelectionContext(
        server_round,
        cfg.seed,
        cfg.clients_per_round,
        population.sizes,
        cfg.poc_candidates,
        partial(_local_losses, fed, pool, global_weights, server_round),
    )


def _local_losses(fed: Federation, pool: ModelPool, weights, server_round: int, client_ids) -> list[float]:
    """Loss of ``weights`` on each client's training images (a seeded subset if poc_samples > 0)."""
    cfg = fed.cfg
    tasks = []
    for cid in client_ids:
        images, labels = fed.client_data(cid)
        if 0 < cfg.poc_samples < len(labels):
            g = torch.Generator().manual_seed(client_seed(cfg.seed, server_round, cid) + 1)
            idx = torch.randperm(len(labels), generator=g)[: cfg.poc_samples].to(labels.device)
            images, labels = images[idx], labels[idx]
        run = partial(evaluate, weights=weights, runtime=fed.runtime, batch_size=cfg.eval_batch_size)
        tasks.append(partial(run, images=images, labels=labels))
    return [scores["loss"] for scores in pool.map(tasks)]


def _weighted(results: list[ClientResult], key: str) -> float:
    total = sum(r.num_examples for r in results)
    return sum(r.metrics[key] * r.num_examples for r in results) / max(total, 1)


def run_training(
    cfg: Config,
    run_dir: str | Path,
    data: Cifar100,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: tuple[RoundCallback, ...] = (),
) -> pd.DataFrame:
    """Train ``cfg.rounds`` rounds into ``run_dir`` (continuing a checkpoint if ``resume``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    strategy = build_strategy(cfg)
    runtime = resolve_runtime(cfg)
    runtime.apply_global_settings()

    start_round = 0
    global_weights: dict[str, torch.Tensor]
    if resume:
        ckpt = load_checkpoint(run_dir)
        saved = config_from_dict(ckpt.meta["config"])
        if saved.replace(rounds=cfg.rounds) != cfg:
            raise CheckpointError(f"config differs from the checkpoint's in {run_dir}; only rounds may change")
        start_round = ckpt.round
        global_weights = {k: v.to(runtime.device) for k, v in ckpt.weights.items()}
        strategy.load_state_dict(
            {k: v.to(runtime.device) for k, v in ckpt.strategy_tensors.items()}, ckpt.meta.get("strategy", {})
        )
        log = MetricsLog.resume(run_dir, start_round)
    else:
        log = MetricsLog(run_dir)
        global_weights = read_weights(model_spec(cfg).build(seed=cfg.seed).to(runtime.device))
    save_yaml(cfg, run_dir / "config.yaml")

    labels = data.train_y.numpy()
    partition = partition_for(cfg, labels)
    if not resume or not (run_dir / "partition.csv").exists():
        write_partition(partition, labels, run_dir, f"{cfg.partitioner} partition, {cfg.num_clients} clients")
    fed = Federation(
        cfg, data.to(runtime.device), [torch.as_tensor(p, device=runtime.device) for p in partition], runtime
    )
    population = Population.from_partition(labels, partition)
    strategy.setup(population)
    test_x, test_y = fed.data.test_x, fed.data.test_y
    if cfg.eval_limit:
        test_x, test_y = test_x[: cfg.eval_limit], test_y[: cfg.eval_limit]

    def model_factory() -> torch.nn.Module:
        return runtime.prepare(model_spec(cfg).build(seed=cfg.seed))

    select = SELECTORS[cfg.client_selection]
    rounds_bar = tqdm(
        range(start_round + 1, cfg.rounds + 1),
        initial=start_round,
        total=cfg.rounds,
        desc="rounds",
        unit="round",
        disable=not progress,
    )
    with ModelPool(model_factory, runtime.workers, runtime.new_stream, runtime.stream) as pool:
        if progress:
            tqdm.write(f"fedcifar: {cfg.rounds} rounds on {runtime.describe()} -> {run_dir}")
        for server_round in rounds_bar:
            t0 = time.perf_counter()
            sampled = select(_selection_context(fed, pool, population, global_weights, server_round))
            global_weights, row = _fit_round(fed, strategy, pool, server_round, sampled, global_weights, progress)
            if server_round % cfg.eval_every == 0 or server_round == cfg.rounds:
                t_eval = time.perf_counter()
                counts = evaluate_parallel(pool, global_weights, test_x, test_y, runtime, cfg.eval_batch_size)
                row.update(test_row(counts, population.label_counts))
                row["eval_seconds"] = time.perf_counter() - t_eval
            _finish_round(cfg, run_dir, log, strategy, global_weights, row, t0)
            if progress:
                tqdm.write(summary_line(row, cfg.rounds))
            for callback in callbacks:
                callback(server_round, row)
    rounds_bar.close()
    return log.frame


def _fit_round(
    fed: Federation,
    strategy,
    pool: ModelPool,
    server_round: int,
    sampled: list[int],
    global_weights: dict[str, torch.Tensor],
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the sampled clients in parallel and aggregate; return new weights and train metrics."""
    t0 = time.perf_counter()
    extra = strategy.configure_fit(server_round, sampled)
    order = largest_first([len(fed.client_indices[cid]) for cid in sampled])
    tasks = [
        partial(_fit_task, fed, global_weights, cid, fed.instructions(server_round, cid, extra.get(cid, {})))
        for cid in (sampled[i] for i in order)
    ]
    main_thread = time.perf_counter() - t0  # time the round loop spends outside waiting for clients
    bar = tqdm(total=len(tasks), desc=f"round {server_round}", unit="client", leave=False, disable=not progress)

    def tracked(results: Iterator[ClientResult]) -> Iterator[ClientResult]:
        nonlocal main_thread
        for res in results:
            bar.update(1)
            handed = time.perf_counter()
            yield res
            main_thread += time.perf_counter() - handed  # the strategy folding this result in

    new_weights, results = strategy.aggregate_fit(server_round, global_weights, tracked(pool.map(tasks)))
    bar.close()
    seconds = time.perf_counter() - t0
    images = sum(r.metrics["images"] for r in results)
    broadcast = sum(r.metrics.get("setup_seconds", 0.0) for r in results) / pool.workers
    row: dict[str, Any] = {
        "round": server_round,
        "train_loss": _weighted(results, "train_loss"),
        "train_acc": _weighted(results, "train_acc"),
        "num_examples": sum(r.num_examples for r in results),
        "train_images": int(images),
        "train_seconds": seconds,
        "images_per_sec": images / max(seconds, 1e-9),
        "overhead_seconds": main_thread + broadcast,
        "clients": " ".join(str(r.client_id) for r in results),
    }
    return new_weights, row


def _finish_round(cfg, run_dir, log, strategy, global_weights, row, t0) -> None:
    """Record the round: metrics, plots, exported model, then the resume checkpoint."""
    t_book = time.perf_counter()
    row["round_seconds"] = t_book - t0  # includes the writes below up to here
    log.append(row)
    plot_curves(log.frame, run_dir)
    last_test = log.frame["test_acc"].dropna() if "test_acc" in log.frame else pd.Series(dtype=float)
    info = {
        **model_spec(cfg).to_dict(),
        "round": row["round"],
        "test_acc": float(last_test.iloc[-1]) if len(last_test) else None,
    }
    export_global(run_dir, global_weights, info)
    tensors, meta = strategy.state_dict()
    save_checkpoint(
        run_dir,
        row["round"],
        global_weights,
        tensors,
        {
            "config": cfg.to_dict(),
            "model": model_spec(cfg).to_dict(),
            "strategy": meta,
            "rng": {"seed": cfg.seed, "next_round": row["round"] + 1},
        },
    )
    # Writes after the metrics row: not in metrics.csv, but callbacks (the benchmark) see them.
    row["bookkeeping_seconds"] = time.perf_counter() - t_book


def summary_line(row: dict[str, Any], total_rounds: int) -> str:
    text = f"round {row['round']:>3}/{total_rounds}  train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}"
    if "test_acc" in row:
        text += f"  test loss {row['test_loss']:.3f} acc {row['test_acc']:.3f} top5 {row['test_top5']:.3f}"
    return text + f"  {row['round_seconds']:.1f}s  {row['images_per_sec']:.0f} img/s"
