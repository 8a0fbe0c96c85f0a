"""What the server checks in a model file before serving it: metadata first, then the numbers.

A file is served only if its metadata names a buildable model with the classes the server has
labels for, carries a sane round and test accuracy, and every floating-point weight is
finite. Anything else is a :class:`~fedcifar.track.checkpoint.CheckpointError` with a
one-line reason, raised before the model is built (metadata) or before it can be swapped in
(weights), so a broken round never reaches a request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedcifar.model import ModelSpec, ModelSpecError
from fedcifar.track.checkpoint import CheckpointError

MAX_ROUND = 10_000_000


@dataclass(frozen=True)
class ServedInfo:
    """The validated metadata of a served model file."""

    arch: str
    norm: str
    num_classes: int
    round: int
    test_acc: float | None


def served_info(meta: Any, path: Path, num_labels: int | None = None) -> ServedInfo:
    """Validate a model file's metadata (types, ranges, known architecture); CheckpointError if off."""
    try:
        spec = ModelSpec.from_metadata(meta)
    except ModelSpecError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    assert isinstance(meta, Mapping)  # from_metadata checked it
    if num_labels is not None and spec.num_classes != num_labels:
        raise CheckpointError(
            f"{path}: the model has {spec.num_classes} classes but the server has {num_labels} label names"
        )
    round_ = meta.get("round", 0)
    if isinstance(round_, bool) or not isinstance(round_, int) or not 0 <= round_ <= MAX_ROUND:
        raise CheckpointError(f"{path}: round in model metadata must be an integer >= 0, got {round_!r}")
    acc = meta.get("test_acc")
    if acc is not None and (
        isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc) or not 0 <= acc <= 1
    ):
        raise CheckpointError(f"{path}: test_acc in model metadata must be a number in [0, 1], got {acc!r}")
    return ServedInfo(spec.arch, spec.norm, spec.num_classes, round_, None if acc is None else float(acc))


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, if any."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
