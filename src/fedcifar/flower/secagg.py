"""Secure aggregation (SecAgg+, Bell et al. 2020) for the round loop, by Flower's own protocol code.

Flower 1.41 ships SecAgg+ as a legacy-API workflow (``SecAggPlusWorkflow``: it samples and
aggregates through a legacy ``Strategy`` held in a ``LegacyContext``) and a client mod
(``secaggplus_mod``: it expects the legacy ``fitins.*``/``fitres.*`` record layout). fedcifar
keeps its own round loop, so this module drives that workflow for one round at a time:

* :class:`_ThisRound` is the legacy strategy the workflow asks: its ``configure_fit`` returns the
  nodes the loop selected with their ``FitIns``, and its ``aggregate_fit`` receives the unmasked
  aggregate (which the workflow writes into every result's ``parameters``) and the clients'
  metrics, and keeps them. Nothing else of the legacy API is used.
* :func:`secagg_mod` is the client side: Flower's ``secaggplus_mod`` on the train messages of a
  secure round; every other message passes straight through.

What travels. Each client sends ``Δ_i = w_i - w`` of every float tensor (BatchNorm's running
statistics divided by ``codec.SECURE_STAT_SCALE``, 64: a running variance can move by more than
``secagg_clipping_range`` in a round, a weight does not),
scaled by its weight ``r_i = f_i / max_j f_j`` (f: the round's aggregation factor, FedAvg's n_i,
known to the server) and masked; the weight itself travels as the masked vector's first entry,
so the unmasked result is Σ r_i Δ_i / Σ r_i. Integer buffers (``num_batches_tracked``) are not
sent: the aggregate keeps the global values. A client's metrics (loss, images, ...) travel in
the clear beside its masked vector, as Flower's layout has them.

Quantisation bound. Flower's mod clips each coordinate of ``r_i Δ_i`` to ``±c`` (c =
``secagg_clipping_range``), maps it to 2²² levels with stochastic rounding (error < one level,
``2c / 2²²``), and quantises ``r_i`` to 1/2²². With R = Σ r_i over the n clients in the sum, every
coordinate of the unmasked mean is within ``n · 2c / 2²² / R`` of Σ r_i Δ_i / Σ r_i (for
unclipped coordinates), plus the weights' rounding, below ``2⁻²¹ / min r_i`` of |Δ| relative.
:func:`quantisation_bound` computes it; the loopback test holds the aggregate to it.

Stochastic rounding draws from NumPy's global generator inside Flower's mod (and the masks
from the OS's CSPRNG): a secure run is not bit-reproducible, only within that bound.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import FitIns, bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from fedcifar.config import Config
from fedcifar.flower import codec

QUANTISATION_LEVELS = 2**22  # Flower's default quantization_range
STAGE_TIMEOUT = 600.0  # seconds a protocol stage waits for replies when round_timeout is 0 (no limit)
RECEIVED_ENV = "FEDCIFAR_SECAGG_RECEIVED"  # a JSONL file of what each reply to the ServerApp held (tests)
STALL_KEY = "stall-before-masking"  # node config: write this file and hang before masking (dropout tests)
STAGES = {"setup_stage": "keys", "share_keys_stage": "shares", "collect_masked_vectors_stage": "masking"}
STAGES["unmask_stage"] = "unmasking"


def protocol_size(cfg: Config, n: int) -> tuple[int | float, int]:
    """(num_shares, reconstruction_threshold) for a round of ``n`` clients, as Flower's workflow takes them.

    Shares: ``secagg_num_shares`` or every client (given as 1.0: Flower's "all of them").
    Threshold: ``secagg_threshold`` or ceil(2/3 of the shares), at least 2 and at most the shares.
    """
    shares = min(cfg.secagg_num_shares or n, n)
    threshold = cfg.secagg_threshold or max(2, math.ceil(2 * shares / 3))
    return (1.0 if shares == n else shares), min(threshold, shares)


def quantisation_bound(cfg: Config, weights: list[float], statistic: bool = False) -> float:
    """The largest error of one coordinate of the unmasked mean, for clients of these weights r_i.

    A BatchNorm statistic travels divided by ``codec.SECURE_STAT_SCALE``: its bound is that much larger.
    """
    step = 2 * cfg.secagg_clipping_range / QUANTISATION_LEVELS
    return len(weights) * step / sum(weights) * (codec.SECURE_STAT_SCALE if statistic else 1.0)


class TimedWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, with the wall seconds of each stage kept in ``seconds``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = {}
        for method, stage in STAGES.items():
            setattr(self, method, self._timed(getattr(self, method), stage))

    def _timed(self, step: Callable[..., bool], stage: str) -> Callable[..., bool]:
        def run(*args) -> bool:
            t0 = time.perf_counter()
            try:
                return step(*args)
            finally:
                self.seconds[stage] = time.perf_counter() - t0

        return run


@dataclass
class _Node:
    """All the workflow reads of a legacy ClientProxy: its node id."""

    node_id: int


@dataclass
class _ThisRound:
    """The legacy strategy the workflow drives: this round's FitIns out, the unmasked mean in."""

    fitins: dict[int, FitIns]
    mean: list[np.ndarray] | None = None
    replies: dict[int, tuple[int, dict]] = field(default_factory=dict)  # node -> (examples field, metrics)

    def configure_fit(self, server_round, parameters, client_manager):
        return [(_Node(node), ins) for node, ins in self.fitins.items()]

    def aggregate_fit(self, server_round, results, failures):
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)  # the workflow put the mean in each
        self.replies = {proxy.node_id: (res.num_examples, dict(res.metrics)) for proxy, res in results}
        return None, {}


@dataclass
class _Nodes:
    """The client manager the workflow logs from."""

    count: int

    def num_available(self) -> int:
        return self.count


class QuickGrid:
    """A Grid whose ``send_and_receive`` polls every ``poll`` seconds (Flower's sleeps 3 s a stage).

    With ``FEDCIFAR_SECAGG_RECEIVED=FILE`` it appends one JSON line per reply to FILE: its node,
    its float arrays' element count, its records, and a sample of any masked vector (what a
    server operator holds).
    """

    def __init__(self, grid, poll: float, server_round: int) -> None:
        self.grid, self.poll, self.server_round = grid, poll, server_round
        self.received = os.environ.get(RECEIVED_ENV) or None

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        waiting = set(self.grid.push_messages(list(messages)))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and (deadline is None or time.monotonic() < deadline):
            for reply in self.grid.pull_messages(list(waiting)):
                waiting.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
                if self.received:
                    self._note(reply)
            if waiting:
                time.sleep(self.poll)
        return replies

    def _note(self, reply: Message) -> None:
        line: dict = {"round": self.server_round, "node": reply.metadata.src_node_id, "error": reply.has_error()}
        if not reply.has_error():
            content = reply.content
            line["float_elements"] = sum(
                int(np.prod(a.shape)) for r in content.array_records.values() for a in r.values() if "float" in a.dtype
            )
            line["records"] = sorted(content.keys())
            configs = content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and Key.MASKED_PARAMETERS in configs:
                vectors = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
                largest = max(vectors, key=lambda v: v.size)
                line["masked"] = {"dtype": str(largest.dtype), "size": int(largest.size)}
                line["masked"]["sample"] = [int(v) for v in largest.ravel()[:256]]
        with open(self.received, "a") as f:
            f.write(json.dumps(line) + "\n")


@dataclass
class SecureRoundResult:
    mean: dict[str, np.ndarray] | None  # Σ r_i Δ_i / Σ r_i per float key; None if the protocol halted
    replies: dict[int, dict]  # node -> the metrics it sent in the clear (the clients in the sum)
    seconds: dict[str, float]  # per protocol stage


def run_secure_round(
    grid, cfg: Config, server_round: int, fitins: dict[int, FitIns], float_keys: list[str], timeout: float
) -> SecureRoundResult:
    """One round of SecAgg+ through Flower's workflow: the unmasked weighted mean of the deltas."""
    shares, threshold = protocol_size(cfg, len(fitins))
    workflow = TimedWorkflow(
        shares,
        threshold,
        max_weight=codec.SECURE_MAX_WEIGHT,
        clipping_range=cfg.secagg_clipping_range,
        quantization_range=QUANTISATION_LEVELS,
        timeout=timeout or STAGE_TIMEOUT,
    )
    strategy = _ThisRound(fitins)
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
            MAIN_PARAMS_RECORD: ArrayRecord(),
        }
    )
    context = LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy, client_manager=_Nodes(len(fitins)))
    workflow(QuickGrid(grid, 0.05, server_round), context)
    mean = None if strategy.mean is None else dict(zip(float_keys, strategy.mean, strict=True))
    return SecureRoundResult(mean, {node: metrics for node, (_, metrics) in strategy.replies.items()}, workflow.seconds)


# -- the client side ------------------------------------------------------------------------------


def secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` for the train messages of a secure round; others pass through.

    It adds ``secagg_mask_seconds`` (the mod's own time at the masking stage, training excluded) to
    the metrics. With ``stall-before-masking=FILE`` in the node config, the node writes FILE and
    hangs at the masking stage instead of training (after it shared its keys, before it sends its
    masked vector): how the dropout test kills a node at that point.
    """
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if msg.metadata.message_type != MessageType.TRAIN or configs is None:
        return call_next(msg, context)
    stage = configs.get(Key.STAGE)
    if stage == Stage.COLLECT_MASKED_VECTORS and (stall := str(context.node_config.get(STALL_KEY, ""))):
        Path(stall).write_text(str(os.getpid()))
        time.sleep(3600)
    spent = [0.0]

    def timed(m: Message, c: Context) -> Message:
        t0 = time.perf_counter()
        out = call_next(m, c)
        spent[0] = time.perf_counter() - t0
        return out

    t0 = time.perf_counter()
    reply = secaggplus_mod(msg, context, timed)
    if stage == Stage.COLLECT_MASKED_VECTORS and "fitres.metrics" in reply.content.config_records:
        reply.content.config_records["fitres.metrics"]["secagg_mask_seconds"] = time.perf_counter() - t0 - spent[0]
    return reply
