"""Client-side options: SGD momentum, weight decay, gradient clipping, and the lr schedule across rounds.

The optimizer is checked against a hand-written heavy-ball reference on a linear model; the
schedule against its closed forms; and the options reach a Flower ClientApp through the
codec and train there exactly as in the local backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedcifar.client.train import read_weights, train_client
from fedcifar.config import ConfigError, build_config
from fedcifar.federation import client_instructions, round_lr
from test_strategies_client import CPU, _data, _features, _grad, _instructions, _model


def test_sgd_momentum_and_weight_decay_match_a_heavy_ball_reference():
    images, labels = _data(n=8)
    model = _model()
    start = read_weights(model)
    lr, mu, wd, steps = 0.05, 0.9, 0.01, 4
    instr = _instructions(steps=steps, batch_size=len(labels), lr=lr, momentum=mu, weight_decay=wd)
    got = train_client(model, start, images, labels, instr, CPU)

    x, y = _features(images), labels.numpy()
    w, b = start["1.weight"].double().numpy(), start["1.bias"].double().numpy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for step in range(steps):  # torch's SGD: v = mu v + (g + wd w) (v = g at the first step); w -= lr v
        gw, gb = _grad(w, b, x, y)
        gw, gb = gw + wd * w, gb + wd * b
        vw, vb = (gw, gb) if step == 0 else (mu * vw + gw, mu * vb + gb)
        w, b = w - lr * vw, b - lr * vb
    np.testing.assert_allclose(got.weights["1.weight"].numpy(), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.weights["1.bias"].numpy(), b, rtol=1e-4, atol=1e-6)
    plain = train_client(model, start, images, labels, _instructions(steps=steps, batch_size=8, lr=lr), CPU)
    assert not torch.allclose(plain.weights["1.weight"], got.weights["1.weight"])  # the options did something


def test_adam_weight_decay_is_torchs_l2_penalty():
    images, labels = _data(n=8)
    model = _model()
    start = read_weights(model)
    instr = _instructions(optimizer="adam", steps=3, batch_size=8, lr=1e-3, weight_decay=0.1)
    got = train_client(model, start, images, labels, instr, CPU)
    ref = _model()
    ref.load_state_dict(start)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.from_numpy(_features(images)).float()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref[1](x), labels).backward()
        opt.step()
    torch.testing.assert_close(got.weights["1.weight"], ref[1].weight.detach(), rtol=1e-4, atol=1e-6)


def test_grad_clip_bounds_each_steps_whole_gradient_after_the_proximal_term():
    images, labels = _data(n=8)
    model = _model()
    start = read_weights(model)
    lr, mu, clip, steps = 0.05, 0.5, 0.05, 3
    instr = _instructions(steps=steps, batch_size=8, lr=lr, proximal_mu=mu, grad_clip=clip)
    got = train_client(model, start, images, labels, instr, CPU)

    x, y = _features(images), labels.numpy()
    w0, b0 = start["1.weight"].double().numpy(), start["1.bias"].double().numpy()
    w, b = w0.copy(), b0.copy()
    for _ in range(steps):  # g = grad CE + mu (w - w0), scaled to norm clip (torch adds 1e-6 to the norm)
        gw, gb = _grad(w, b, x, y)
        gw, gb = gw + mu * (w - w0), gb + mu * (b - b0)
        norm = np.sqrt((gw**2).sum() + (gb**2).sum())
        assert norm > 2 * clip  # the clip is active at every step
        scale = clip / (norm + 1e-6)
        w, b = w - lr * scale * gw, b - lr * scale * gb
    np.testing.assert_allclose(got.weights["1.weight"].numpy(), w, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.weights["1.bias"].numpy(), b, rtol=1e-4, atol=1e-7)
    free = train_client(model, start, images, labels, _instructions(steps=1, batch_size=8, lr=lr), CPU)
    step = {k: (free.weights[k] - start[k]).double() for k in ("1.weight", "1.bias")}
    assert sum(float((d**2).sum()) for d in step.values()) ** 0.5 > 2 * lr * clip  # unclipped steps are longer


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", lambda r: 0.1),
        ("exponential", lambda r: 0.1 * 0.998 ** (r - 1)),
        ("cosine", lambda r: 0.1 * (1 + math.cos(math.pi * (r - 1) / 10)) / 2),
    ],
)
def test_round_lr_follows_the_schedule_and_reaches_the_clients(schedule, expected):
    cfg = build_config("smoke", None, {"lr": "0.1", "rounds": "10", "lr_schedule": schedule})
    for r in (1, 2, 5, 10):
        assert round_lr(cfg, r) == pytest.approx(expected(r), rel=1e-12)
        assert client_instructions(cfg, r, 0, {}).lr == round_lr(cfg, r)
    assert round_lr(cfg, 1) == 0.1  # every schedule starts at lr
    if schedule == "cosine":
        assert 0 < round_lr(cfg, 10) < 0.01 and round_lr(cfg, 6) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"momentum": "0.9"}, "momentum=0.9 is for client_optimizer=sgd"),
        ({"client_optimizer": "sgd", "momentum": "1"}, "momentum must be in [0, 1)"),
        ({"weight_decay": "-1"}, "weight_decay must be >= 0"),
        ({"grad_clip": "-1"}, "grad_clip must be >= 0"),
        ({"lr_decay": "0"}, "lr_decay must be in (0, 1]"),
        ({"lr_schedule": "step"}, "lr_schedule='step' is not one of"),
    ],
)
def test_bad_client_options_are_one_line_errors(over, message):
    with pytest.raises(ConfigError, match=None) as err:
        build_config("smoke", None, over)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_client_options_train_the_same_on_a_flower_client_app(tmp_path, monkeypatch):
    pytest.importorskip("flwr", reason="the [flower] extra is not installed")
    from flwr.app import Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedcifar.data.shards import export_shards
    from fedcifar.federation import model_spec
    from fedcifar.flower import codec
    from fedcifar.flower.client_app import app
    from fedcifar.runtime import resolve_runtime
    from test_client_state import SIZES, _cfg, _data, _partition

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    over = dict(
        strategy="fedavg", norm="batch", client_optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, grad_clip=1.0
    )
    cfg = _cfg(**over, lr_schedule="exponential", lr_decay=0.5)
    data = _data()
    export_shards(data.train_x, data.train_y, _partition(), tmp_path)
    context = Context(1, 7, {"partition-id": 0, "data-path": str(tmp_path)}, RecordDict(), {})
    weights = read_weights(model_spec(cfg).build(seed=cfg.seed))
    instr = client_instructions(cfg, 3, 0, {})
    assert (instr.momentum, instr.weight_decay, instr.grad_clip, instr.lr) == (0.9, 5e-4, 1.0, 0.05 * 0.25)
    reply = app(
        Message(codec.encode_fit(cfg, 0, instr, weights), dst_node_id=7, message_type=MessageType.TRAIN), context
    )
    assert not reply.has_error()
    remote = codec.decode_result(reply.content)

    runtime = resolve_runtime(cfg.replace(workers=1))
    model = runtime.prepare(model_spec(cfg).build(seed=cfg.seed))
    x, y = data.train_x[: SIZES[0]], data.train_y[: SIZES[0]]
    local = train_client(model, weights, x, y, instr, runtime, 0)
    assert all(torch.equal(remote.weights[k], local.weights[k]) for k in local.weights)
    for plain_cfg in (cfg.replace(momentum=0.0), cfg.replace(grad_clip=0.0)):  # each option changes the training
        plain = train_client(model, weights, x, y, client_instructions(plain_cfg, 3, 0, {}), runtime, 0)
        assert not all(torch.equal(plain.weights[k], local.weights[k]) for k in local.weights)
