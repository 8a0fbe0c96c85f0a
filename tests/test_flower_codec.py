"""Flower records <-> fedcifar messages, and client shards: exact round trips and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="the [flower] extra is not installed")

from flwr.app import ConfigRecord, RecordDict  # noqa: E402

from fedcifar.config import build_config  # noqa: E402
from fedcifar.data.cifar100 import DataError  # noqa: E402
from fedcifar.data.shards import export_shards, load_shard, shard_path  # noqa: E402
from fedcifar.flower import codec  # noqa: E402
from fedcifar.messages import ClientInstructions, ClientResult  # noqa: E402


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, generator=g), "bn.num_batches_tracked": torch.tensor(7)}


def _same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("scaffold", [False, True])
def test_fit_instructions_survive_the_records_exactly(scaffold):
    cfg = build_config("smoke", None, {"strategy": "scaffold" if scaffold else "fedprox"})
    extra = {"control_server": _weights(1), "local_bn": True} if scaffold else {"proximal_mu": 0.25}
    extra.update(fault="nan", attack="sign_flip", attack_scale=2.5)  # attacks and faults act on every backend
    instr = ClientInstructions(seed=2**32 - 5, epochs=1, steps=6, lr=1e-3, augment=False, optimizer="sgd", **extra)
    content = codec.encode_fit(cfg, 11, instr, _weights())
    got_cfg, client, got, weights = codec.decode_fit(content)
    assert got_cfg == cfg and client == 11
    _same(weights, _weights())
    assert {"fault", "attack", "attack_scale"} <= set(codec.SCALAR_FIELDS)
    for name in codec.SCALAR_FIELDS:
        assert getattr(got, name) == getattr(instr, name), name
    if scaffold:
        _same(got.control_server, _weights(1))
        assert got.local_bn is True
    else:
        assert got.control_server is None and got.local_bn is False


def test_results_survive_the_records_exactly_and_leave_the_clients_state_behind():
    state = {"control": _weights(3), "local": _weights(4)}
    extras = {"control_delta": _weights(5)}
    result = ClientResult(5, _weights(2), 781, {"train_loss": 1.5, "images": 1562.0}, state, extras)
    content = codec.encode_result(result)
    back = codec.decode_result(content)
    assert (back.client_id, back.num_examples, back.metrics) == (5, 781, result.metrics)
    _same(back.weights, result.weights)
    _same(back.extras["control_delta"], extras["control_delta"])
    assert back.state == {} and sorted(content) == ["arrays", "extras.control_delta", "metrics"]  # c_i stays home


def test_client_state_survives_a_nodes_context_exactly():
    state = {"control": _weights(3), "local": _weights(4)}
    records = RecordDict({"other-app": ConfigRecord({"x": 1}), **codec.state_records(state)})
    back = codec.state_from_records(records)
    assert sorted(back) == ["control", "local"]
    _same(back["control"], state["control"])
    _same(back["local"], state["local"])
    assert codec.state_from_records(RecordDict()) == {}


def test_shards_hold_each_client_alone_and_refuse_tampering(tmp_path):
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(30) % 7
    partition = [np.arange(0, 10), np.arange(10, 30)]
    paths = export_shards(images, labels, partition, tmp_path)
    assert paths == [shard_path(tmp_path, 0), shard_path(tmp_path, 1)]
    x, y = load_shard(paths[1], client_id=1)
    assert torch.equal(x, images[10:]) and torch.equal(y, labels[10:])
    with pytest.raises(DataError, match="holds client 1, not client 0"):
        load_shard(paths[1], client_id=0)
    with pytest.raises(DataError, match="not found"):
        load_shard(shard_path(tmp_path, 9))
    raw = bytearray(paths[0].read_bytes())
    raw[-1] ^= 0xFF  # flip a pixel
    paths[0].write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_shard(paths[0])
    paths[1].write_bytes(b"not a shard")
    with pytest.raises(DataError, match="not a readable client shard"):
        load_shard(paths[1])
