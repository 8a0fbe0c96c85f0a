"""The ClientApp: one SuperNode is one client, holding only its own shard.

Its node config names the client (``partition-id``) and the folder of shards (``data-path``,
written by ``fedcifar partition --export``; under the Simulation Runtime the run config names it). Each message is translated by
:mod:`fedcifar.flower.codec` and handed to the same functions the local backend calls:
``train_client`` for a fit, ``eval_counts`` for a loss query. A node whose shard is missing or
corrupt logs one line and sends an error reply; the server records a failure for it.

Under ``secure_aggregation`` the train messages of a round pass through Flower's SecAgg+ client
mod (:func:`fedcifar.flower.secagg.secagg_mod`): only its masked vector of this client's update
leaves the node.

The client's own state (SCAFFOLD's c_i, FedBN's BatchNorm layers) lives here, in
``context.state``: read before the update, replaced by what it returns. Each message runs in a
fresh ``flwr-clientapp`` process, which gets the node's context from the SuperNode and pushes
it back when the message is done; the SuperNode keeps it in memory for the run's later
messages. So it persists across rounds, and is lost when the SuperNode restarts (the client
starts again from zero c_i and the global BatchNorm layers) or when a new run starts (a
resumed run has a new run id). A failed update leaves it as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcifar.calibrate import resolve_runtime
from fedcifar.client.evaluate import eval_counts
from fedcifar.client.train import train_client
from fedcifar.config import Config
from fedcifar.data.cifar100 import DataError
from fedcifar.data.shards import load_shard, shard_path
from fedcifar.errors import one_line
from fedcifar.federation import NUM_CLASSES, loss_sample, model_spec
from fedcifar.flower import codec
from fedcifar.flower.procs import process_start_unix
from fedcifar.flower.secagg import secagg_mod
from fedcifar.messages import ClientState
from fedcifar.runtime import Runtime

log = logging.getLogger("fedcifar.flower")
CLIENT_ERROR = 1  # Error.code of a reply whose client could not do its part (reason: one line)

app = ClientApp()


def shard_folder(context: Context) -> str:
    """The folder of client shards: the node config's ``data-path``, else the run config's.

    A SuperNode of a deployment names its own folder. The virtual nodes of Flower's Simulation
    Runtime get only ``partition-id`` and ``num-partitions``, so there the run config carries
    it (`fedcifar federation simulate` exports the shards into it).
    """
    for config in (context.node_config, context.run_config):
        if str(config.get("data-path", "")):
            return str(config["data-path"])
    raise DataError("no data-path: give it in the node config (or, in a simulation, the run config)")


def node_client(context: Context) -> tuple[int, torch.Tensor, torch.Tensor]:
    """This node's client id and its shard (images, labels)."""
    try:
        client_id = int(context.node_config["partition-id"])
    except (KeyError, ValueError):
        raise DataError("node config needs partition-id=<int> and data-path=<folder of client shards>") from None
    folder = shard_folder(context)
    images, labels = load_shard(shard_path(folder, client_id), client_id)  # once: each message is a new process
    return client_id, images, labels


def client_runtime(cfg: Config) -> Runtime:
    """One client per process, trained as a simulated client of ``cfg`` would be on this machine.

    The same intra-op threads as one of the simulator's workers (on a 2-core CPU with 16 clients
    a round: 2 workers x 1 thread, so 1 thread here, not the 2 a lone process would take) and the
    same precision (bf16 autocast where the static rule or this machine's cached calibration picks
    it): thread count and precision change the float results. No torch.compile: every message is
    a new process, which would pay the warm-up each time.
    """
    runtime = dataclasses.replace(resolve_runtime(cfg.replace(compile="off")), workers=1)
    runtime.apply_global_settings()
    return runtime


def _fail(msg: Message, exc: Exception) -> Message:
    reason = one_line(exc)
    log.error("fedcifar client: %s", reason)
    return Message(Error(CLIENT_ERROR, reason), reply_to=msg)


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Who this node is: its client id, its size and its label histogram (for the server's population)."""
    try:
        client_id, _, labels = node_client(context)
    except DataError as exc:
        return _fail(msg, exc)
    counts = torch.bincount(labels, minlength=NUM_CLASSES).tolist()
    record = MetricRecord({"client_id": client_id, "num_examples": len(labels), "label_counts": counts})
    return Message(RecordDict({codec.METRICS: record}), reply_to=msg)


@app.train(mods=[secagg_mod])
def train(msg: Message, context: Context) -> Message:
    """One client update; in a secure round (Flower's legacy layout) the reply is what secagg_mod masks."""
    started = time.time()
    secure = codec.SECURE_FIT in msg.content.config_records
    try:
        client_id, images, labels = node_client(context)
        if secure:
            cfg, wanted, instructions, weights, weight = codec.decode_secure_fit(msg.content)
        else:
            cfg, wanted, instructions, weights = codec.decode_fit(msg.content)
        if wanted != client_id:
            raise DataError(f"this node holds client {client_id}, the server asked for client {wanted}")
        runtime = client_runtime(cfg)
        model = runtime.prepare(model_spec(cfg).build(seed=cfg.seed))
        state = codec.state_from_records(context.state)
        prepared = time.time()
        result = train_client(model, weights, images, labels, instructions, runtime, client_id, state)
    except (DataError, ValueError, RuntimeError, KeyError) as exc:
        return _fail(msg, exc)
    keep_state(context, result.state)
    # Where the time goes (`fedcifar bench`): this process's start, this handler's, and shard + model setup.
    result.metrics.update(
        app_process_start=process_start_unix() or 0.0, app_start=started, app_prepare=prepared - started
    )
    if secure:
        reply = codec.encode_secure_result(result, weights, weight, cfg.secagg_clipping_range)
        return Message(reply, reply_to=msg)
    return Message(codec.encode_result(result), reply_to=msg)


def keep_state(context: Context, state: ClientState) -> None:
    """Replace this node's client state in ``context.state`` (Flower saves it after the message)."""
    for key in [k for k in context.state if k.startswith(codec.STATE)]:
        del context.state[key]
    for key, record in codec.state_records(state).items():
        context.state[key] = record


@app.evaluate()
def local_loss(msg: Message, context: Context) -> Message:
    """The loss of the sent weights on this node's training data (power-of-choice's question)."""
    try:
        client_id, images, labels = node_client(context)
        cfg = codec.decode_config(msg.content)
        server_round = int(msg.content[codec.CONFIG]["server_round"])
        idx = loss_sample(cfg, server_round, client_id, len(labels))
        if idx is not None:
            images, labels = images[idx], labels[idx]
        runtime = client_runtime(cfg)
        model = runtime.prepare(model_spec(cfg).build(seed=cfg.seed))
        weights = codec.from_record(msg.content[codec.ARRAYS])
        counts = eval_counts(model, weights, images, labels, runtime, runtime.eval_batch_size, fold_bn=False)
    except (DataError, ValueError, RuntimeError, KeyError) as exc:
        return _fail(msg, exc)
    record = MetricRecord({"client_id": client_id, "loss": counts.scores()["loss"]})
    return Message(RecordDict({codec.METRICS: record}), reply_to=msg)
