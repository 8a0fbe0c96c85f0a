"""ResNet-18 for 32x32 images: torchvision's network with a CIFAR stem."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import resnet18

NUM_CLASSES = 100


def group_norm(num_channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, num_channels), num_channels)


# "fedbn" is a BatchNorm network whose BN layers stay with each client (strategy/fedbn.py).
NORM_LAYERS = {"batch": nn.BatchNorm2d, "group": partial(group_norm), "fedbn": nn.BatchNorm2d}


def build_model(norm: str = "batch", num_classes: int = NUM_CLASSES, seed: int = 0) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 first conv and no max-pool, as for CIFAR.

    Initialisation draws from a forked RNG seeded with ``seed``, so the global random state
    is left as it was and every run with the same seed starts from the same weights.
    """
    if norm not in NORM_LAYERS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORM_LAYERS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet18(num_classes=num_classes, norm_layer=NORM_LAYERS[norm])
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
