import pytest
import torch
from torch import nn

from fedcifar.model.resnet import build_model


def test_cifar_stem_and_output_shape():
    model = build_model("batch")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 100
    model.eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.22e6, rel=0.01)


def test_group_norm_variant_has_no_running_statistics():
    model = build_model("group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any("running_mean" in k for k in model.state_dict())


def test_initialisation_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_model(seed=1), build_model(seed=1), build_model(seed=2)
    assert torch.rand(1) == expected
    assert torch.equal(a.conv1.weight, b.conv1.weight) and torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("layer")
