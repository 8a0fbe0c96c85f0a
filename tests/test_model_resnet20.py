"""ResNet-20 beside ResNet-18: structure, every norm, model metadata, and the paths that rebuild
a model from a file (serve, the offline loader, resume)."""

from __future__ import annotations

import typing

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fedcifar.cli import main
from fedcifar.client.evaluate import fold_batchnorm
from fedcifar.config import Config, build_config
from fedcifar.model import ARCHITECTURES, ModelSpec, ModelSpecError, build_model
from fedcifar.serve.predictor import Predictor, inference_runtime
from fedcifar.sim.engine import run_training
from fedcifar.track.checkpoint import (
    MODEL_FILE,
    CheckpointError,
    export_global,
    load_checkpoint,
    load_model,
    read_metadata,
)


def test_resnet20_is_he_et_al_cifar_resnet():
    model = build_model(arch="resnet20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # 19 3x3 convs + the fc layer = 20 weight layers
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3)] == [3, 3, 3]
    assert model.conv1.stride == (1, 1) and model.fc.in_features == 64 and model.fc.out_features == 100
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.278e6, rel=0.02)
    with torch.inference_mode():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("norm", ["batch", "group", "fedbn"])
def test_every_norm_builds_and_trains_for_both_models(arch, norm):
    model = build_model(norm, seed=0, arch=arch)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (norm != "group")
    loss = model.train()(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_config_names_exactly_the_built_architectures():
    assert set(typing.get_args(typing.get_type_hints(Config)["model"])) == set(ARCHITECTURES)
    assert build_config("paper-cpu").model == "resnet20" and build_config("paper").model == "resnet18"
    with pytest.raises(ValueError, match="unknown model"):
        build_model(arch="vgg11")


def test_folded_batchnorm_gives_the_same_outputs():
    model = build_model(arch="resnet20", seed=3)
    with torch.no_grad():  # non-trivial running statistics
        model.train()(torch.randn(64, 3, 32, 32) * 2 + 1)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    group = build_model("group", arch="resnet20")
    assert fold_batchnorm(group) is group


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ([], "must be a JSON object"),
        ({"arch": "resnet50"}, "unknown model architecture 'resnet50'"),
        ({"arch": 3}, "unknown model architecture 3"),
        ({"arch": "resnet20", "norm": "layer"}, "unknown norm 'layer'"),
        ({"arch": "resnet20", "num_classes": "x"}, "num_classes in model metadata must be a positive integer"),
        ({"arch": "resnet20", "num_classes": 0}, "must be a positive integer"),
    ],
)
def test_bad_model_metadata_is_one_clear_error(meta, message):
    with pytest.raises(ModelSpecError, match=message):
        ModelSpec.from_metadata(meta)


def test_legacy_files_name_resnet18():
    assert ModelSpec.from_metadata({"arch": "resnet18-cifar", "norm": "group"}) == ModelSpec("resnet18", "group", 100)


def test_resnet20_run_exports_metadata_that_serve_rebuilds(tmp_path, cifar):
    cfg = build_config("paper-cpu", None, dict(rounds=1, clients_per_round=2, local_steps=2, eval_limit=200))
    run_training(cfg, tmp_path, cifar, progress=False)
    meta = read_metadata(tmp_path / MODEL_FILE)
    assert (meta["arch"], meta["norm"], meta["num_classes"], meta["round"]) == ("resnet20", "batch", 100, 1)
    assert load_checkpoint(tmp_path).meta["model"] == {"arch": "resnet20", "norm": "batch", "num_classes": 100}
    assert load_file(tmp_path / MODEL_FILE)["fc.weight"].shape == (100, 64)

    offline, info = load_model(tmp_path / MODEL_FILE)  # the offline loader
    assert info["arch"] == "resnet20" and offline.fc.in_features == 64 and not offline.training

    predictor = Predictor(inference_runtime("fp32"))
    loaded = predictor.load(tmp_path / MODEL_FILE)  # built from the metadata alone
    assert isinstance(loaded.model, type(build_model(arch="resnet20")))
    probs = predictor.forward(loaded, cifar.test_x[:4])
    assert probs.shape == (4, 100) and torch.allclose(probs.sum(1), torch.ones(4), atol=1e-4)


def test_serve_refuses_a_file_naming_an_unknown_architecture(tmp_path, capsys):
    path = tmp_path / MODEL_FILE
    export_global(tmp_path, build_model(arch="resnet20").state_dict(), {"arch": "resnet99", "round": 1})
    with pytest.raises(CheckpointError, match="unknown model architecture 'resnet99'"):
        Predictor(inference_runtime("fp32")).load(path)
    code = main(["serve", "--model", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown model architecture 'resnet99'" in err


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_folding_leaves_no_batchnorm_and_is_safe_beside_other_threads(arch):
    import threading

    model = build_model(arch=arch).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fold_batchnorm(model).modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    errors = []

    def fold_and_run():
        try:
            for _ in range(3):
                with torch.inference_mode():
                    fold_batchnorm(model)(torch.randn(2, 3, 32, 32))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=fold_and_run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
