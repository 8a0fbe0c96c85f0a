"""Evaluation: one pass over labelled images gives loss, top-1/top-5 and per-class hits.

The server's test pass (sharded over workers: the counts of shards add up exactly), the
power-of-choice losses and the centralized reference all evaluate through here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fedcifar.client.train import load_weights, unwrap
from fedcifar.data.augment import Normalize
from fedcifar.runtime import Runtime


@dataclass(frozen=True)
class EvalCounts:
    """Sums from one pass over labelled images; shards of a test set add up exactly."""

    loss_sum: float
    top1: int
    top5: int
    n: int
    class_correct: tuple[int, ...]  # top-1 hits per class
    class_total: tuple[int, ...]  # images per class

    def __add__(self, other: EvalCounts) -> EvalCounts:
        if not other.n or not self.n:
            return self if other.n == 0 else other
        return EvalCounts(
            self.loss_sum + other.loss_sum,
            self.top1 + other.top1,
            self.top5 + other.top5,
            self.n + other.n,
            tuple(a + b for a, b in zip(self.class_correct, other.class_correct, strict=True)),
            tuple(a + b for a, b in zip(self.class_total, other.class_total, strict=True)),
        )

    def scores(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"loss": self.loss_sum / n, "acc": self.top1 / n, "top5": self.top5 / n}

    def class_accuracy(self) -> list[float]:
        """Top-1 accuracy per class; NaN for a class with no images."""
        return [c / t if t else float("nan") for c, t in zip(self.class_correct, self.class_total, strict=True)]


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """(parent, conv name, bn name) for each BatchNorm that directly follows a conv.

    ResNets name them in two ways: ``convN``/``bnN`` attributes of one block, and a
    Sequential ``(conv, bn)`` such as a projection shortcut.
    """
    for parent in model.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for first, second in zip(names, names[1:], strict=False):
                if isinstance(children[first], nn.Conv2d) and isinstance(children[second], nn.BatchNorm2d):
                    yield parent, first, second
            continue
        for name, child in children.items():
            bn_name = "bn" + name.removeprefix("conv")
            is_conv = name.startswith("conv") and isinstance(child, nn.Conv2d)
            if is_conv and isinstance(children.get(bn_name), nn.BatchNorm2d):
                yield parent, name, bn_name


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the conv before it.

    Same outputs (up to rounding) with one op less per layer; whether that is faster depends
    on the machine and layout (docs/performance.md has the measurements). Plain module
    surgery, not torch.fx: fx tracing patches ``nn.Module.__call__`` process-wide, which
    breaks models running in other threads. A model without BatchNorm is returned as it is.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    folded = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in list(_conv_bn_pairs(folded)):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return folded


@torch.inference_mode()
def eval_counts(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor] | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    runtime: Runtime,
    batch_size: int = 1000,
    fold_bn: bool = True,
) -> EvalCounts:
    """Loss sum, top-1/top-5 hits and per-class hits of ``weights`` on uint8 ``images``.

    ``fold_bn`` evaluates a copy with BatchNorm folded into the convs (same outputs up to rounding).
    """
    model = unwrap(model)  # evaluation runs eagerly: no second compilation for eval mode
    if weights is not None:
        load_weights(model, weights)
    model = model.eval()
    if fold_bn:
        model = fold_batchnorm(model).to(memory_format=runtime.memory_format)
    device = runtime.device
    normalize = Normalize(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.int64)
    top5 = torch.zeros((), device=device, dtype=torch.int64)
    num_classes = None
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start : start + batch_size].to(device), runtime.memory_format)
        y = labels[start : start + batch_size].to(device)
        with runtime.autocast():
            logits = model(x).float()
        if num_classes is None:
            num_classes = logits.shape[1]
            class_correct = torch.zeros(num_classes, device=device, dtype=torch.int64)
            class_total = torch.zeros(num_classes, device=device, dtype=torch.int64)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        best5 = logits.topk(5, dim=1).indices
        hit = best5[:, 0] == y
        top1 += hit.sum()
        top5 += (best5 == y[:, None]).any(dim=1).sum()
        class_correct += torch.bincount(y[hit], minlength=num_classes)
        class_total += torch.bincount(y, minlength=num_classes)
    if num_classes is None:
        return EvalCounts(0.0, 0, 0, 0, (), ())
    return EvalCounts(
        float(loss_sum),
        int(top1),
        int(top5),
        len(labels),
        tuple(class_correct.tolist()),
        tuple(class_total.tolist()),
    )
