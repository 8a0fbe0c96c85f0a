"""What a model file needs to be rebuilt: the architecture's name and its constructor arguments.

The spec travels in the metadata of ``model_global.safetensors`` and of the checkpoint, so
``serve``, the offline loader and ``--resume`` rebuild the right network from the file alone.
Metadata is validated here before anything is built from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from fedcifar.model.resnet import ARCHITECTURES, NORM_LAYERS, build_model

STATISTIC_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_statistic(key: str) -> bool:
    """A BatchNorm running statistic: a buffer estimated from data, not a trained parameter."""
    return key.endswith(STATISTIC_SUFFIXES)


def is_trained(key: str, tensor: Tensor) -> bool:
    """A trained parameter: float, and not a BatchNorm statistic.

    What an attack poisons, and what robust rules measure distances and norms over: the
    statistics of non-IID clients differ far more than their parameter updates do (on
    paper-cpu 11-48 against 3-4 in L2 norm), so over every float entry they would hide an attacker.
    """
    return tensor.is_floating_point() and not is_statistic(key)


def batchnorm_keys(keys: Iterable[str]) -> list[str]:
    """The state-dict entries of BatchNorm layers: every module that has a running_mean.

    FedBN's local layers (weight, bias, running statistics, counter), which each client keeps.
    """
    keys = list(keys)
    modules = {k.removesuffix("running_mean") for k in keys if k.endswith(".running_mean")}
    return [k for k in keys if k[: k.rfind(".") + 1] in modules]


# Files written before the `model` key existed name ResNet-18 this way.
LEGACY_NAMES = {"resnet18-cifar": "resnet18"}


class ModelSpecError(ValueError):
    """Model metadata that names no buildable model. The message is one line."""


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "resnet18"
    norm: str = "batch"
    num_classes: int = 100

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self, seed: int = 0) -> nn.Module:
        return build_model(self.norm, self.num_classes, seed=seed, arch=self.arch)

    @classmethod
    def from_metadata(cls, meta: Any) -> ModelSpec:
        """The spec in a file's metadata, checked for types, ranges and known names."""
        if not isinstance(meta, Mapping):
            raise ModelSpecError(f"model metadata must be a JSON object, got {type(meta).__name__}")
        arch = meta.get("arch", "resnet18")
        arch = LEGACY_NAMES.get(arch, arch) if isinstance(arch, str) else arch
        if arch not in ARCHITECTURES:
            raise ModelSpecError(f"unknown model architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        norm = meta.get("norm", "batch")
        if norm not in NORM_LAYERS:
            raise ModelSpecError(f"unknown norm {norm!r} in model metadata; known: {', '.join(NORM_LAYERS)}")
        num_classes = meta.get("num_classes", 100)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= 100_000:
            raise ModelSpecError(f"num_classes in model metadata must be a positive integer, got {num_classes!r}")
        return cls(arch, norm, num_classes)
