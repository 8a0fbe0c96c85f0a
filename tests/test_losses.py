"""FedLC's calibrated cross-entropy and FedDecorr's term against references written from the papers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedcifar.client.losses import FeatureTap, Objective, calibrated_logits, decorrelation_loss
from fedcifar.client.train import read_weights, train_client
from fedcifar.data.augment import Normalize
from fedcifar.messages import ClientInstructions
from fedcifar.model.resnet import build_model
from fedcifar.runtime import Runtime

CPU = Runtime(torch.device("cpu"), None, False, 1, 1)


def _np_calibrated_ce(logits, labels, counts, tau):
    """Zhang et al. 2022: cross-entropy of z_y - τ n_y^(-1/4); classes with n_y = 0 leave the softmax."""
    with np.errstate(divide="ignore"):
        z = logits - tau * np.where(counts > 0, counts.astype(float) ** -0.25, np.inf)
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def _np_decorr(f, eps=1e-5):
    """Shi et al. 2023, eq. 5: ||K||_F² / d² with K the correlation matrix of the standardised batch."""
    z = (f - f.mean(0)) / np.sqrt(f.var(0) + eps)
    k = z.T @ z / len(f)
    return (k**2).sum() / f.shape[1] ** 2


def test_fedlc_loss_matches_the_paper_and_drops_absent_classes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 6, generator=g, dtype=torch.float64) * 3
    counts = torch.tensor([40, 0, 3, 1, 0, 17])
    labels = torch.tensor([0, 2, 3, 5, 0, 2, 3, 5])  # only classes the client holds
    tau = 0.7
    loss = Objective(fedlc_tau=tau, label_counts=counts)(logits, labels, None)
    assert float(loss) == pytest.approx(
        _np_calibrated_ce(logits.numpy(), labels.numpy(), counts.numpy(), tau), rel=1e-6
    )
    assert torch.isneginf(calibrated_logits(logits, counts, tau)[:, [1, 4]]).all()
    plain = Objective()(logits, labels, None)
    assert float(plain) == pytest.approx(float(nn.functional.cross_entropy(logits.float(), labels)), rel=1e-6)
    assert float(loss) != pytest.approx(float(plain), rel=1e-3)


def test_decorrelation_loss_matches_the_paper_and_separates_collapsed_from_spread_features():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(32, 10, generator=g, dtype=torch.float64)
    assert float(decorrelation_loss(feats)) == pytest.approx(_np_decorr(feats.numpy()), rel=1e-5)
    collapsed = feats[:, :1] @ torch.ones(1, 10, dtype=torch.float64) + 1e-3 * feats  # one direction
    assert float(decorrelation_loss(collapsed)) > 0.9 > 5 * float(decorrelation_loss(feats))
    assert float(decorrelation_loss(feats[:1])) == 0.0  # no correlation from a single image
    beta = 0.3
    obj = Objective(feddecorr_beta=beta)
    logits, labels = torch.randn(32, 4, generator=g), torch.randint(0, 4, (32,), generator=g)
    expected = nn.functional.cross_entropy(logits, labels) + beta * _np_decorr(feats.numpy())
    assert float(obj(logits, labels, feats)) == pytest.approx(float(expected), rel=1e-5)


class _Tiny(nn.Module):
    """A linear classifier whose features are the flattened image, ending in ``fc`` as the ResNets do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(x[:, :, :8, :8], 1))


def test_one_client_step_with_fedlc_and_feddecorr_follows_the_reference_objective():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 3, 3, 3])  # classes 2 and 4 absent
    model = _Tiny()
    start = read_weights(model)
    lr, tau, beta = 0.1, 1.0, 0.5
    instr = ClientInstructions(
        seed=0, epochs=1, steps=1, batch_size=64, lr=lr, augment=False, optimizer="sgd",
        fedlc_tau=tau, feddecorr_beta=beta,
    )  # fmt: skip
    res = train_client(model, start, images, labels, instr, CPU)
    # the reference: the two papers' terms written out in float64, differentiated by autograd
    x = torch.flatten(Normalize("cpu")(images)[:, :, :8, :8], 1).double()
    w = start["fc.weight"].double().requires_grad_()
    b = start["fc.bias"].double().requires_grad_()
    counts = torch.bincount(labels, minlength=5).double()
    z = x @ w.T + b - tau * counts.pow(-0.25)
    ce = -torch.log_softmax(z, 1)[torch.arange(12), labels].mean()
    f = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    decorr = ((f.T @ f / 12) ** 2).sum() / x.shape[1] ** 2
    (ce + beta * decorr).backward()
    np.testing.assert_allclose(res.weights["fc.weight"].double(), (w - lr * w.grad).detach(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.weights["fc.bias"].double(), (b - lr * b.grad).detach(), rtol=1e-4, atol=1e-6)
    plain = train_client(model, start, images, labels, ClientInstructions(**{**instr.__dict__, "fedlc_tau": 0.0}), CPU)
    assert not torch.allclose(plain.weights["fc.bias"], res.weights["fc.bias"])


@pytest.mark.parametrize(("arch", "width"), [("resnet20", 64), ("resnet18", 512)])
def test_feature_tap_sees_the_penultimate_features_of_both_architectures(arch, width):
    model = build_model(arch=arch).eval()
    tap = FeatureTap(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    assert tap.features.shape == (3, width)
    torch.testing.assert_close(model.fc(tap.features), logits)
    tap.close()
    model(x)
    assert not model.fc._forward_pre_hooks
