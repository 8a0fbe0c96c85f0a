"""The local backend: every client of a federation trained in this process, on a thread pool.

The whole dataset sits on the device once; a client's data is an index tensor into it.
Clients of a round are submitted largest first (:func:`~fedcifar.server.backend.largest_first`) to a
:class:`~fedcifar.sim.executor.ModelPool` of one model per worker, and their results come
back in submission order, the order the round loop folds them in (``fold_order``), so which
worker finishes first never changes the aggregate: on CPU, a run of this backend is bit-for-bit
reproducible whatever the timing. Not on CUDA (cuDNN's autotuned kernels are not
deterministic). The Flower backend's nodes train in their own processes with the same thread
layout and precision; the loop holds back its early arrivals, so a loopback federation on the
same machine gives the same bits (tests/test_flower_federation.py), nodes on other hardware
need not. A client
whose update raises, or has not finished ``round_timeout`` seconds into the round, is reported
as a failure, with its reason, and the round goes on.

The backend also plays the clients' nodes in keeping each client's own state (SCAFFOLD's
c_i, FedBN's layers) in a :class:`~fedcifar.sim.store.ClientStore`: handed to the client's
update, replaced by what it returns as soon as it returns (as a SuperNode does, whatever the
server then makes of the reply), and never passed to the server. The loop checkpoints it
through :meth:`LocalBackend.state_dict`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import partial

import torch

from fedcifar.client.evaluate import EvalCounts, eval_counts
from fedcifar.client.train import train_client
from fedcifar.config import Config
from fedcifar.data.cifar100 import Cifar100
from fedcifar.data.partition import Partition
from fedcifar.errors import one_line
from fedcifar.federation import loss_sample, model_spec, validation_indices
from fedcifar.messages import ClientFailure, ClientInstructions, ClientResult, Weights
from fedcifar.runtime import Runtime
from fedcifar.server.backend import FitTask, largest_first
from fedcifar.sim.executor import LATE, ModelPool
from fedcifar.sim.store import ClientStore

log = logging.getLogger("fedcifar.sim")


class LocalBackend:
    """Clients as index tensors into one in-memory dataset, trained by a pool of models."""

    def __init__(self, cfg: Config, data: Cifar100, partition: Partition, runtime: Runtime) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.data = data.to(runtime.device)
        self.client_indices = [torch.as_tensor(p, device=runtime.device) for p in partition]
        self.test_x, self.test_y = self.data.test_x, self.data.test_y
        if cfg.eval_limit:
            self.test_x, self.test_y = self.test_x[: cfg.eval_limit], self.test_y[: cfg.eval_limit]
        held_out = torch.as_tensor(validation_indices(cfg, data.train_y.numpy()), device=runtime.device)
        self.val_x, self.val_y = self.data.train_x[held_out], self.data.train_y[held_out]
        spec = model_spec(cfg)
        self.pool = ModelPool(
            lambda: runtime.prepare(spec.build(seed=cfg.seed), cfg.batch_size),
            runtime.workers,
            runtime.new_stream,
            runtime.stream,
        )
        self.workers = runtime.workers
        self.clients = ClientStore()

    @property
    def _late_reason(self) -> str:
        return f"no result within round_timeout={self.cfg.round_timeout:g}s"

    def client_data(self, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.client_indices[client_id]
        return self.data.train_x[idx], self.data.train_y[idx]

    def _train(
        self, global_weights: Weights, client_id: int, instructions: ClientInstructions, cancel: threading.Event, model
    ) -> ClientResult | ClientFailure:
        if cancel.is_set():  # the round stopped waiting before this client could start
            return ClientFailure(client_id, self._late_reason)
        images, labels = self.client_data(client_id)
        state = self.clients.get(client_id)
        try:
            result = train_client(
                model, global_weights, images, labels, instructions, self.runtime, client_id, state, cancel
            )
        except Exception as exc:  # one client's failure must not end the round
            log.warning("client %d failed in training", client_id, exc_info=True)
            return ClientFailure(client_id, one_line(exc))
        self.clients.put(client_id, result.state)  # stays here: the server gets the reply without it
        return dataclasses.replace(result, state={})

    def fit(
        self, server_round: int, global_weights: Weights, tasks: Sequence[FitTask]
    ) -> Iterator[ClientResult | ClientFailure]:
        order = largest_first([len(self.client_indices[t.client_id]) for t in tasks])
        cancel = threading.Event()  # set when the round stops waiting: releases injected hangs
        jobs = [partial(self._train, global_weights, tasks[i].client_id, tasks[i].instructions, cancel) for i in order]
        try:
            for i, item in zip(order, self.pool.map(jobs, self.cfg.round_timeout), strict=True):
                if item is LATE:
                    cancel.set()
                    item = ClientFailure(tasks[i].client_id, self._late_reason)
                yield item
        finally:
            cancel.set()

    def evaluate(self, weights: Weights) -> EvalCounts:
        """``weights`` on the test set, each worker on a contiguous shard (the counts add up exactly)."""
        return self._sharded_eval(weights, self.test_x, self.test_y)

    def validate(self, weights: Weights) -> EvalCounts:
        """``weights`` on the ``val_size`` held-out training images (no client holds them)."""
        return self._sharded_eval(weights, self.val_x, self.val_y)

    def _sharded_eval(self, weights: Weights, images: torch.Tensor, labels: torch.Tensor) -> EvalCounts:
        n, workers = len(labels), self.pool.workers
        bounds = [(n * i // workers, n * (i + 1) // workers) for i in range(workers)]
        run = partial(eval_counts, weights=weights, runtime=self.runtime, batch_size=self.runtime.eval_batch_size)
        jobs = [partial(run, images=images[a:b], labels=labels[a:b]) for a, b in bounds if b > a]
        return functools.reduce(operator.add, self.pool.map(jobs))

    def client_losses(self, server_round: int, weights: Weights, client_ids: Sequence[int]) -> list[float]:
        """Loss of ``weights`` on each client's training images (a seeded subset if poc_samples > 0).

        No BatchNorm folding here: a folded copy per client would cost more than it saves.
        """
        cfg = self.cfg
        run = partial(
            eval_counts, weights=weights, runtime=self.runtime, batch_size=self.runtime.eval_batch_size, fold_bn=False
        )
        jobs = []
        for cid in client_ids:
            images, labels = self.client_data(cid)
            idx = loss_sample(cfg, server_round, cid, len(labels))
            if idx is not None:
                idx = idx.to(labels.device)
                images, labels = images[idx], labels[idx]
            jobs.append(partial(run, images=images, labels=labels))
        return [counts.scores()["loss"] for counts in self.pool.map(jobs)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every client's own state, as flat tensors for the resume checkpoint."""
        return self.clients.state_dict()

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.clients.load_state_dict(tensors)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
