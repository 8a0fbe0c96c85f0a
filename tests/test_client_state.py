"""Per-client state (SCAFFOLD's c_i, FedBN's BatchNorm layers) lives with the client.

The same client update serves both places a client lives: the simulator's store (LocalBackend)
and a SuperNode's ``context.state`` (the ClientApp, called in process here). Each test trains
the same client twice and checks that the second update used what the first one kept, that
the server's reply carries only Δc_i, and that the state round-trips through a checkpoint.
Synthetic images and ResNet-20, so every update takes a fraction of a second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcifar.client.train import read_weights, train_client
from fedcifar.config import build_config
from fedcifar.data.cifar100 import Cifar100
from fedcifar.data.shards import export_shards
from fedcifar.federation import client_instructions, model_spec
from fedcifar.messages import ClientResult
from fedcifar.runtime import resolve_runtime
from fedcifar.server.backend import FitTask, HoldsClientState
from fedcifar.sim.local import LocalBackend
from fedcifar.sim.store import ClientStore
from fedcifar.strategy.registry import build_strategy

flwr = pytest.importorskip("flwr", reason="the [flower] extra is not installed")

SIZES = (24, 16)


def _cfg(**over):
    values = dict(
        strategy="scaffold", norm="fedbn", model="resnet20", num_clients=2, clients_per_round=2, local_steps=2,
        batch_size=8, precision="fp32", workers=1, threads_per_worker=1, compile="off", eval_limit=8,
    )  # fmt: skip
    return build_config("smoke", None, {**values, **over})


def _data() -> Cifar100:
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (n,), generator=g)
    return Cifar100(images, labels, images[:8], torch.arange(8), [f"class {i}" for i in range(100)])


def _partition() -> list[np.ndarray]:
    return [np.arange(0, SIZES[0]), np.arange(SIZES[0], sum(SIZES))]


def _tasks(cfg, server_round: int, client_ids, c=None):
    """The round's instructions as the loop builds them (c: a stand-in global control variate)."""
    strategy = build_strategy(cfg)
    extra = strategy.configure_fit(server_round, list(client_ids))
    for cid in client_ids:
        if c is not None:
            extra[cid]["control_server"] = c
    return [FitTask(cid, client_instructions(cfg, server_round, cid, extra[cid])) for cid in client_ids]


def _c(weights, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: 1e-3 * torch.randn(v.shape, generator=g) for k, v in weights.items() if "running" not in k}


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_client_store_round_trips_and_owns_what_it_holds():
    store = ClientStore()
    state = {
        "control": {"a": torch.ones(2), "b.c": torch.zeros(1)},
        "local": {"bn.num_batches_tracked": torch.tensor(3)},
    }
    store.put(3, state)
    store.put(11, {"control": {"a": torch.full((2,), 2.0)}})
    store.put(5, {})  # nothing to keep: nothing held
    flat = store.state_dict()
    assert set(flat) == {"3.control.a", "3.control.b.c", "3.local.bn.num_batches_tracked", "11.control.a"}
    other = ClientStore()
    other.load_state_dict(flat)
    assert list(other) == [3, 11] and other.get(5) == {}
    assert _equal(other.get(3)["control"], state["control"]) and _equal(other.get(3)["local"], state["local"])
    state["control"]["a"] = torch.zeros(2)  # rebinding the caller's dict does not reach the store
    assert torch.equal(store.get(3)["control"]["a"], torch.ones(2))
    with pytest.raises(ValueError, match="must not contain"):
        store.put(1, {"bad.name": {}})


def test_local_backend_keeps_each_clients_state_and_hands_the_server_only_the_delta():
    cfg = _cfg()
    runtime = resolve_runtime(cfg)
    data = _data()
    with LocalBackend(cfg, data, _partition(), runtime) as backend:
        assert isinstance(backend, HoldsClientState)
        start = read_weights(model_spec(cfg).build(seed=cfg.seed))
        first = list(backend.fit(1, start, _tasks(cfg, 1, [0, 1])))
        assert all(isinstance(r, ClientResult) and r.state == {} for r in first)  # the server never sees c_i
        kept = {cid: backend.clients.get(cid) for cid in (0, 1)}
        for r in first:  # c_i was 0, so Δc_i is c_i+ and the client kept it, with its trained BN layers
            assert _equal(r.extras["control_delta"], kept[r.client_id]["control"])
            assert _equal(kept[r.client_id]["local"], {k: r.weights[k] for k in kept[r.client_id]["local"]})
        flat = backend.state_dict()
        assert {k.split(".", 2)[1] for k in flat} == {"control", "local"}

        weights, c = first[0].weights, _c(first[0].weights)
        (task,) = _tasks(cfg, 2, [0], c)
        (second,) = backend.fit(2, weights, [task])
        # the same update, computed by hand from what client 0 kept
        model = runtime.prepare(model_spec(cfg).build(seed=cfg.seed))
        x, y = backend.client_data(0)
        expected = train_client(model, weights, x, y, task.instructions, runtime, 0, kept[0])
        assert _equal(second.weights, expected.weights)
        assert _equal(second.extras["control_delta"], expected.extras["control_delta"])
        ci_new = backend.clients.get(0)["control"]
        assert _equal(second.extras["control_delta"], {k: ci_new[k] - kept[0]["control"][k] for k in ci_new})
        forgetful = train_client(model, weights, x, y, task.instructions, runtime, 0)  # without its state
        assert not _equal(forgetful.weights, expected.weights)

    with LocalBackend(cfg, data, _partition(), runtime) as resumed:  # a resume restores the clients' state
        resumed.load_state_dict(flat)
        (again,) = resumed.fit(2, weights, [task])
        assert _equal(again.weights, second.weights)


def test_the_client_app_keeps_its_state_in_the_nodes_context_across_messages(tmp_path, monkeypatch):
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedcifar.flower import codec
    from fedcifar.flower.client_app import app

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):  # what flwr-clientapp sets
        monkeypatch.setattr(TaskIdentity, name, value)
    cfg = _cfg()
    data = _data()
    export_shards(data.train_x, data.train_y, _partition(), tmp_path)
    node_config = {"partition-id": 1, "data-path": str(tmp_path)}
    context = Context(1, 7, node_config, RecordDict({"someone-else": ConfigRecord({"x": 1})}), {})
    weights = read_weights(model_spec(cfg).build(seed=cfg.seed))

    def send(server_round, global_weights, c=None, client_id=1):
        (task,) = _tasks(cfg, server_round, [client_id], c)
        content = codec.encode_fit(cfg, client_id, task.instructions, global_weights)
        msg = Message(content, dst_node_id=7, message_type=MessageType.TRAIN)
        return task, app(msg, context)

    _, reply = send(1, weights)
    assert not reply.has_error() and not any(k.startswith(codec.STATE) for k in reply.content)
    first = codec.decode_result(reply.content)
    kept = codec.state_from_records(context.state)
    assert sorted(kept) == ["control", "local"] and "someone-else" in context.state
    assert _equal(first.extras["control_delta"], kept["control"])  # from c_i = 0

    task, reply = send(2, first.weights, _c(first.weights))
    second = codec.decode_result(reply.content)
    runtime = resolve_runtime(cfg.replace(workers=1, compile="off"))
    model = runtime.prepare(model_spec(cfg).build(seed=cfg.seed))
    x, y = data.train_x[SIZES[0] :], data.train_y[SIZES[0] :]
    expected = train_client(model, first.weights, x, y, task.instructions, runtime, 1, kept)
    assert _equal(second.weights, expected.weights)
    assert _equal(second.extras["control_delta"], expected.extras["control_delta"])
    assert _equal(codec.state_from_records(context.state)["control"], expected.state["control"])

    before = codec.state_from_records(context.state)
    _, reply = send(3, first.weights, client_id=0)  # this node holds client 1: an error reply
    assert reply.has_error() and "holds client 1" in reply.error.reason
    after = codec.state_from_records(context.state)
    assert all(_equal(before[name], after[name]) for name in before)  # a failed update leaves it alone
