"""Flower records <-> fedcifar's messages. Translation only: no algorithm lives here.

A fit message carries the global weights (``arrays``), the instructions' scalar fields and the
run's config (``config``), and any tensor-valued instruction (SCAFFOLD's c) as its own
ArrayRecord. A reply carries the trained weights, the metrics and each named extra for the
server (``extras.<name>``: SCAFFOLD's Δc_i). The client's own state (c_i, FedBN's layers)
never travels: the node keeps it in ``context.state``, as ``fedcifar.<name>`` ArrayRecords
(:func:`state_records`, :func:`state_from_records`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedcifar.config import Config, config_from_dict
from fedcifar.messages import ClientInstructions, ClientResult, ClientState, Weights

ARRAYS, CONFIG, METRICS, EXTRAS = "arrays", "config", "metrics", "extras."
STATE = "fedcifar."  # the prefix of this package's records in a node's context.state
TENSOR_FIELDS = ("control_server",)
SCALAR_FIELDS = tuple(f.name for f in dataclasses.fields(ClientInstructions) if f.name not in TENSOR_FIELDS)


def to_record(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: v.detach().to("cpu") for k, v in weights.items()})


def from_record(record: ArrayRecord) -> Weights:
    return dict(record.to_torch_state_dict())


def encode_config(cfg: Config, **extra: Any) -> ConfigRecord:
    """The run's config (so a node builds the same model and runtime) plus message fields."""
    return ConfigRecord({"fedcifar-config": json.dumps(cfg.to_dict()), **extra})


def decode_config(content: RecordDict) -> Config:
    return config_from_dict(json.loads(str(content[CONFIG]["fedcifar-config"])))


def encode_fit(cfg: Config, client_id: int, instructions: ClientInstructions, weights: Weights) -> RecordDict:
    scalars = {name: getattr(instructions, name) for name in SCALAR_FIELDS}
    records: dict[str, Any] = {ARRAYS: to_record(weights), CONFIG: encode_config(cfg, client_id=client_id, **scalars)}
    for name in TENSOR_FIELDS:
        value = getattr(instructions, name)
        if value is not None:
            records[name] = to_record(value)
    return RecordDict(records)


def decode_fit(content: RecordDict) -> tuple[Config, int, ClientInstructions, Weights]:
    config = content[CONFIG]
    scalars = {name: config[name] for name in SCALAR_FIELDS}
    tensors = {name: from_record(content[name]) for name in TENSOR_FIELDS if name in content}
    instructions = ClientInstructions(**scalars, **tensors)
    return decode_config(content), int(config["client_id"]), instructions, from_record(content[ARRAYS])


def encode_result(result: ClientResult) -> RecordDict:
    metrics = {**result.metrics, "num_examples": result.num_examples, "client_id": result.client_id}
    records: dict[str, Any] = {ARRAYS: to_record(result.weights), METRICS: MetricRecord(metrics)}
    for name, tensors in result.extras.items():
        records[EXTRAS + name] = to_record(tensors)
    return RecordDict(records)


def decode_result(content: RecordDict) -> ClientResult:
    metrics = dict(content[METRICS])
    client_id, num_examples = int(metrics.pop("client_id")), int(metrics.pop("num_examples"))
    extras = {key.removeprefix(EXTRAS): from_record(content[key]) for key in content if key.startswith(EXTRAS)}
    weights = from_record(content[ARRAYS])
    return ClientResult(client_id, weights, num_examples, {k: float(v) for k, v in metrics.items()}, extras=extras)


def state_records(state: ClientState) -> dict[str, ArrayRecord]:
    """A client's own state as the records a node keeps in ``context.state``."""
    return {STATE + name: to_record(tensors) for name, tensors in state.items()}


def state_from_records(records: RecordDict) -> ClientState:
    """The client state kept in a node's ``context.state`` ({} on a node's first message of a run)."""
    return {key.removeprefix(STATE): from_record(records[key]) for key in records if key.startswith(STATE)}


def encode_weights_query(cfg: Config, weights: Weights, **extra: Any) -> RecordDict:
    """An evaluate message: ``weights`` and the config, for a node to score on its own data."""
    return RecordDict({ARRAYS: to_record(weights), CONFIG: encode_config(cfg, **extra)})
