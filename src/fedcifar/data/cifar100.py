"""CIFAR-100 loaded once into uint8 tensors through torchvision's own dataset class."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

# Per-channel mean and std of the 50,000 CIFAR-100 training images, pixels in [0, 1].
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DEFAULT_DATA_DIR = Path.home() / ".cache" / "fedcifar" / "data"


class DataError(RuntimeError):
    """The dataset is missing or corrupt. The message is one line that says what to do."""


@dataclass(frozen=True)
class Cifar100:
    """Both splits as tensors: images uint8 (N, 3, 32, 32), labels int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]

    def to(self, device: torch.device | str) -> Cifar100:
        return Cifar100(
            self.train_x.to(device),
            self.train_y.to(device),
            self.test_x.to(device),
            self.test_y.to(device),
            self.classes,
        )


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``--data-dir``, else ``$FEDCIFAR_DATA_DIR``, else ``~/.cache/fedcifar/data``."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("FEDCIFAR_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


def _split(root: Path, train: bool, download: bool):
    from torchvision.datasets import CIFAR100

    return CIFAR100(root=str(root), train=train, download=download)


def load_cifar100(data_dir: str | Path | None = None, download: bool = True) -> Cifar100:
    """Read the official python-version files under ``data_dir/cifar-100-python``.

    If they are absent or fail torchvision's MD5 check and ``download`` is true, torchvision
    fetches them. Any failure becomes a :class:`DataError` with a one-line fix.
    """
    root = resolve_data_dir(data_dir)
    hint = (
        f"CIFAR-100 not found or corrupt under {root}/cifar-100-python; pass --data-dir (or set "
        "FEDCIFAR_DATA_DIR) to the folder that holds cifar-100-python/, or run with internet "
        "access to download it"
    )
    try:
        try:
            splits = [_split(root, train, download=False) for train in (True, False)]
        except RuntimeError:
            if not download:
                raise DataError(hint) from None
            splits = [_split(root, train, download=True) for train in (True, False)]
    except DataError:
        raise
    except Exception as exc:  # network errors, bad pickles, permission errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{hint} ({reason})") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        return x, y

    train, test = splits
    (train_x, train_y), (test_x, test_y) = tensors(train), tensors(test)
    return Cifar100(train_x, train_y, test_x, test_y, tuple(train.classes))
