"""CIFAR ResNets: torchvision's ResNet-18 with a CIFAR stem, and He et al.'s ResNet-20.

Both are built from torchvision's own pieces. ResNet-18 is ``torchvision.models.resnet18``
with its stem swapped. ResNet-20 (He et al. 2016, section 4.2: 3 stages of 3 basic blocks at
16/32/64 channels on 32x32 maps) cannot be ``torchvision.models.ResNet``, whose 4 stages and
64-512 widths are fixed, so it stacks torchvision's ``BasicBlock`` itself. Its shortcuts are
projection shortcuts (1x1 conv + norm where the shape changes, the paper's option B, as
torchvision does) instead of option A's zero padding: 278 k parameters with 100 classes
(option A's would have 2.8 k fewer).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, conv1x1

NUM_CLASSES = 100


def group_norm(num_channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, num_channels), num_channels)


# "fedbn" is a BatchNorm network whose BN layers stay with each client (strategy/fedbn.py).
NORM_LAYERS = {"batch": nn.BatchNorm2d, "group": group_norm, "fedbn": nn.BatchNorm2d}
# GroupNorm groups per architecture: 32 for ResNet-18's 64-512 channels; 2 for ResNet-20's
# 16-64 channels, the choice of Hsieh et al. 2020 ("The non-IID data quagmire") for it.
GROUP_NORM_GROUPS = {"resnet18": 32, "resnet20": 2}

NormLayer = Callable[[int], nn.Module]


def _resnet18(num_classes: int, norm_layer: NormLayer) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 first conv and no max-pool, as for CIFAR."""
    model = resnet18(num_classes=num_classes, norm_layer=norm_layer)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): a 3x3 stem, 3 stages of n basic blocks, pooling, fc."""

    def __init__(self, blocks_per_stage: int, num_classes: int, norm_layer: NormLayer, widths=(16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(blocks_per_stage):
                downsample = None
                if b == 0 and (stride != 1 or inplanes != planes):
                    downsample = nn.Sequential(conv1x1(inplanes, planes, stride), norm_layer(planes))
                blocks.append(BasicBlock(inplanes, planes, stride if b == 0 else 1, downsample, norm_layer=norm_layer))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHITECTURES: dict[str, Callable[[int, NormLayer], nn.Module]] = {
    "resnet18": _resnet18,
    "resnet20": partial(CifarResNet, 3),
}


def build_model(
    norm: str = "batch", num_classes: int = NUM_CLASSES, seed: int = 0, arch: str = "resnet18"
) -> nn.Module:
    """A freshly initialised ``arch`` network with ``norm`` layers and ``num_classes`` outputs.

    Initialisation draws from a forked RNG seeded with ``seed``, so the global random state
    is left as it was and every run with the same seed starts from the same weights.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if norm not in NORM_LAYERS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORM_LAYERS)}")
    norm_layer = NORM_LAYERS[norm]
    if norm == "group":
        norm_layer = partial(group_norm, groups=GROUP_NORM_GROUPS[arch])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[arch](num_classes, norm_layer)
