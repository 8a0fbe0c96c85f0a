"""The client-side hooks (FedProx's proximal term, SCAFFOLD's correction, FedBN's local
layers) against numpy references, on a linear model and a few synthetic images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedcifar.client.train import read_weights, train_client
from fedcifar.data.augment import Normalize
from fedcifar.messages import ClientInstructions
from fedcifar.runtime import Runtime

CPU = Runtime(torch.device("cpu"), None, False, 1, 1)
CLASSES = 5


def _data(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return images, labels


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, CLASSES))
    with torch.no_grad():
        model[1].weight.mul_(10)  # non-trivial logits
    return model


def _features(images) -> np.ndarray:
    return Normalize("cpu")(images).reshape(len(images), -1).double().numpy()


def _grad(w, b, x, y):
    """Mean cross-entropy gradient of a linear softmax model, by hand."""
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    p /= len(y)
    return p.T @ x, p.sum(0)


def _instructions(**kw):
    base = dict(seed=1, epochs=1, steps=0, batch_size=64, lr=0.05, augment=False, optimizer="sgd")
    base.update(kw)
    return ClientInstructions(**base)


def test_fedprox_with_mu_zero_is_plain_fedavg_training():
    images, labels = _data()
    model = _model()
    start = read_weights(model)
    plain = train_client(model, start, images, labels, _instructions(optimizer="adam", steps=3, batch_size=4), CPU)
    prox = train_client(
        model, start, images, labels, _instructions(optimizer="adam", steps=3, batch_size=4, proximal_mu=0.0), CPU
    )
    assert all(torch.equal(plain.weights[k], prox.weights[k]) for k in start)
    assert plain.metrics["train_loss"] == prox.metrics["train_loss"] and prox.state == {}


def test_fedprox_gradient_matches_numpy_over_three_sgd_steps():
    images, labels = _data()
    model = _model()
    start = read_weights(model)
    lr, mu, steps = 0.05, 0.5, 3
    res = train_client(model, start, images, labels, _instructions(steps=steps, lr=lr, proximal_mu=mu), CPU)
    x, y = _features(images), labels.numpy()
    w0, b0 = start["1.weight"].double().numpy(), start["1.bias"].double().numpy()
    w, b = w0.copy(), b0.copy()
    for _ in range(steps):  # full-batch steps: the batch order does not change the mean gradient
        gw, gb = _grad(w, b, x, y)
        w, b = w - lr * (gw + mu * (w - w0)), b - lr * (gb + mu * (b - b0))
    np.testing.assert_allclose(res.weights["1.weight"].double().numpy(), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.weights["1.bias"].double().numpy(), b, rtol=1e-4, atol=1e-6)
    plain = train_client(model, start, images, labels, _instructions(steps=steps, lr=lr), CPU)
    assert not torch.allclose(plain.weights["1.weight"], res.weights["1.weight"])


def test_scaffold_client_corrects_its_step_and_returns_option_two_control_variate():
    images, labels = _data()
    model = _model()
    start = read_weights(model)
    g = torch.Generator().manual_seed(5)
    c = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in start.items()}
    c_i = {"1.weight": 0.1 * torch.randn(start["1.weight"].shape, generator=g)}  # bias: c_i missing = 0
    lr = 0.05
    res = train_client(
        model, start, images, labels, _instructions(steps=1, lr=lr, control_server=c), CPU, state={"control": c_i}
    )
    x, y = _features(images), labels.numpy()
    w0, b0 = start["1.weight"].double().numpy(), start["1.bias"].double().numpy()
    gw, gb = _grad(w0, b0, x, y)
    corr_w = c["1.weight"].double().numpy() - c_i["1.weight"].double().numpy()
    corr_b = c["1.bias"].double().numpy()
    # y = x - lr (g + c - c_i)
    np.testing.assert_allclose(res.weights["1.weight"].double().numpy(), w0 - lr * (gw + corr_w), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.weights["1.bias"].double().numpy(), b0 - lr * (gb + corr_b), rtol=1e-4, atol=1e-6)
    # option II: c_i+ = c_i - c + (x - y)/(K lr), which for one SGD step is the gradient at x;
    # the client keeps c_i+ and sends the server only Δc_i = c_i+ - c_i
    new = res.state["control"]
    assert set(new) == {"1.weight", "1.bias"} and set(res.extras) == {"control_delta"}
    np.testing.assert_allclose(new["1.weight"].double().numpy(), gw, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(new["1.bias"].double().numpy(), gb, rtol=1e-3, atol=1e-5)
    delta = res.extras["control_delta"]
    assert torch.equal(delta["1.weight"], new["1.weight"] - c_i["1.weight"])
    assert torch.equal(delta["1.bias"], new["1.bias"])  # a missing c_i entry is zero


def test_scaffold_control_variate_over_several_steps_matches_the_formula():
    images, labels = _data(n=16)
    model = _model(1)
    start = read_weights(model)
    c = {"1.weight": torch.full_like(start["1.weight"], 0.01), "1.bias": torch.full_like(start["1.bias"], -0.02)}
    lr, steps = 0.01, 4
    instr = _instructions(steps=steps, lr=lr, batch_size=4, optimizer="adam", control_server=c)
    res = train_client(model, start, images, labels, instr, CPU)
    for k in c:
        expected = -c[k] + (start[k] - res.weights[k]) / (steps * lr)
        torch.testing.assert_close(res.state["control"][k], expected, rtol=1e-5, atol=1e-6)


def test_local_bn_layers_replace_global_entries_before_training_and_are_kept_after():
    images, labels = _data()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(CLASSES))
    model(torch.zeros(2, 3, 32, 32))  # materialise the lazy layer
    start = read_weights(model)
    bn = ["1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    own = {k: start[k] + 3 for k in bn}
    instr = _instructions(steps=1, lr=0.0, local_bn=True)
    res = train_client(model, start, images, labels, instr, CPU, state={"local": own, "other": {"x": torch.ones(1)}})
    assert torch.equal(res.weights["1.weight"], own["1.weight"])  # lr 0: the overlay is what trained
    assert torch.equal(res.weights["1.num_batches_tracked"], own["1.num_batches_tracked"] + 1)
    assert torch.equal(res.weights["0.weight"], start["0.weight"])
    assert sorted(res.state["local"]) == sorted(bn)  # the trained layers, kept for next time
    assert all(torch.equal(res.state["local"][k], res.weights[k]) for k in bn)
    assert torch.equal(res.state["other"]["x"], torch.ones(1)) and res.extras == {}  # untouched entries carry over
    first = train_client(model, start, images, labels, instr, CPU)  # nothing kept yet: the global layers
    assert torch.equal(first.weights["1.weight"], start["1.weight"])
    plain = train_client(model, start, images, labels, _instructions(steps=1, lr=0.0), CPU, state={"local": own})
    assert torch.equal(plain.weights["1.weight"], start["1.weight"]) and plain.state["local"] is own


def test_feddyn_client_gradient_and_kept_state_match_the_paper_over_three_sgd_steps():
    """Acar et al. 2021, Algorithm 1: minimise L_k(w) - <g_k, w> + (α/2)||w - w_global||², then
    g_k+ = g_k - α (w_k - w_global). Full-batch SGD steps written out in numpy."""
    images, labels = _data()
    model = _model()
    start = read_weights(model)
    g = torch.Generator().manual_seed(3)
    g_k = {"1.weight": 0.05 * torch.randn(start["1.weight"].shape, generator=g)}  # bias: g_k missing = 0
    lr, alpha, steps = 0.05, 0.3, 3
    instr = _instructions(steps=steps, lr=lr, feddyn_alpha=alpha)
    res = train_client(model, start, images, labels, instr, CPU, state={"feddyn_grad": g_k})
    x, y = _features(images), labels.numpy()
    w0, b0 = start["1.weight"].double().numpy(), start["1.bias"].double().numpy()
    gw_k = g_k["1.weight"].double().numpy()
    w, b = w0.copy(), b0.copy()
    for _ in range(steps):
        gw, gb = _grad(w, b, x, y)
        w, b = w - lr * (gw - gw_k + alpha * (w - w0)), b - lr * (gb + alpha * (b - b0))
    np.testing.assert_allclose(res.weights["1.weight"].double().numpy(), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.weights["1.bias"].double().numpy(), b, rtol=1e-4, atol=1e-6)
    kept = res.state["feddyn_grad"]
    np.testing.assert_allclose(kept["1.weight"].double().numpy(), gw_k - alpha * (w - w0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kept["1.bias"].double().numpy(), -alpha * (b - b0), rtol=1e-4, atol=1e-6)
    assert res.extras == {}  # g_k never leaves the client


def test_client_state_keys_are_the_same_with_and_without_torch_compile():
    """The hooks see the plain module: a compiled model's ``_orig_mod.`` prefix never reaches
    SCAFFOLD's c_i or FedDyn's g_k, so a resume that switches compile on keeps every client's state."""
    images, labels = _data()
    start = read_weights(_model())
    c = {k: torch.zeros_like(v) for k, v in start.items()}
    instr = _instructions(steps=2, lr=0.05, control_server=c, feddyn_alpha=0.1)
    plain = train_client(_model(), start, images, labels, instr, CPU)
    compiled_model = torch.compile(_model(), backend="eager")  # the same wrapper as inductor's, compiled fast
    compiled = train_client(compiled_model, start, images, labels, instr, CPU, state=plain.state)
    for name in ("control", "feddyn_grad"):
        assert set(plain.state[name]) == set(compiled.state[name]) == {"1.weight", "1.bias"}
    assert set(compiled.extras["control_delta"]) == {"1.weight", "1.bias"}


def test_under_fedbn_no_hook_acts_on_the_local_bn_layers():
    """FedBN's layers are the client's own: SCAFFOLD's c_i and Δc_i and FedDyn's g_k leave them
    out, and with lr 0 the FedProx/FedDyn/SCAFFOLD terms cannot move them (they would pull the
    client's own layers toward values no client trained them from)."""
    images, labels = _data()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(CLASSES))
    model(torch.zeros(2, 3, 32, 32))
    start = read_weights(model)
    own = {k: v + 3 for k, v in start.items() if k.startswith("1.")}
    c = {k: torch.ones_like(v) for k, v in start.items() if v.is_floating_point()}
    kw = dict(steps=2, lr=0.05, control_server=c, feddyn_alpha=0.1, proximal_mu=0.5, local_bn=True)
    res = train_client(model, start, images, labels, _instructions(**kw), CPU, state={"local": own})
    trained = {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert set(res.state["control"]) == set(res.extras["control_delta"]) == set(res.state["feddyn_grad"]) == trained
    # Without local_bn the same hooks cover the BatchNorm parameters too.
    plain = train_client(model, start, images, labels, _instructions(**{**kw, "local_bn": False}), CPU)
    assert set(plain.extras["control_delta"]) == trained | {"1.weight", "1.bias"}
