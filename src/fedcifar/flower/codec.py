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

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedcifar.config import Config, config_from_dict
from fedcifar.messages import ClientInstructions, ClientResult, ClientState, Weights
from fedcifar.model.spec import is_statistic

ARRAYS, CONFIG, METRICS, EXTRAS = "arrays", "config", "metrics", "extras."
STATE = "fedcifar."  # the prefix of this package's records in a node's context.state
SECURE_MAX_WEIGHT = float(2**20)  # a client's weight r_i in (0, 1] travels as round(r_i * this) "examples"
# BatchNorm running statistics travel divided by this: a running variance can move by more than
# the clipping range in a round (ResNet-18 on `paper`: hundreds of coordinates past 8), a weight cannot.
SECURE_STAT_SCALE = 64.0
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


# -- secure aggregation (fedcifar.flower.secagg): Flower's legacy fitins/fitres layout ----------

SECURE_FIT = "fitins.config"  # present in a secure round's train message


def encode_secure_fit(
    cfg: Config, client_id: int, instructions: ClientInstructions, weights: Weights, weight: float
) -> FitIns:
    """A secure round's FitIns: the same fields as :func:`encode_fit`, plus the client's weight r_i."""
    if any(getattr(instructions, name) is not None for name in TENSOR_FIELDS):
        raise ValueError("secure aggregation carries no tensor-valued instruction (SCAFFOLD's c)")
    scalars = {name: getattr(instructions, name) for name in SCALAR_FIELDS}
    config = {"fedcifar-config": json.dumps(cfg.to_dict()), "client_id": client_id, "secagg-weight": weight, **scalars}
    arrays = [v.detach().cpu().numpy() for v in weights.values()]
    return FitIns(ndarrays_to_parameters(arrays), {**config, "fedcifar-keys": json.dumps(list(weights))})


def decode_secure_fit(content: RecordDict) -> tuple[Config, int, ClientInstructions, Weights, float]:
    ins = compat.recorddict_to_fitins(content, keep_input=True)
    config = ins.config
    names = json.loads(str(config["fedcifar-keys"]))
    weights = {
        k: torch.from_numpy(a.copy()) for k, a in zip(names, parameters_to_ndarrays(ins.parameters), strict=True)
    }
    instructions = ClientInstructions(**{name: config[name] for name in SCALAR_FIELDS})
    cfg = config_from_dict(json.loads(str(config["fedcifar-config"])))
    return cfg, int(config["client_id"]), instructions, weights, float(config["secagg-weight"])


def encode_secure_result(result: ClientResult, global_weights: Weights, weight: float, clip: float) -> RecordDict:
    """The FitRes Flower's mod scales by r_i and masks: w_i - w of every float tensor, r_i as num_examples.

    BatchNorm statistics' deltas are divided by ``SECURE_STAT_SCALE`` (the server multiplies back).

    ``secagg_clipped`` counts the coordinates the mod will clip to ±``clip``.
    """
    deltas = [
        ((result.weights[k].float() - w.float()) / (SECURE_STAT_SCALE if is_statistic(k) else 1.0)).numpy()
        for k, w in global_weights.items()
        if w.is_floating_point()
    ]
    metrics = {**result.metrics, "num_examples": result.num_examples, "client_id": result.client_id}
    metrics["secagg_clipped"] = float(sum(int((np.abs(weight * d) > clip).sum()) for d in deltas))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(deltas), round(weight * SECURE_MAX_WEIGHT), metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=False)
