"""CIFAR-100 fine label names, read from the dataset's own ``meta`` file.

The meta file is a pickle, as the dataset ships it. It is only unpickled after its MD5
matches the checksum torchvision pins for CIFAR-100, so nothing but the official file is
ever unpickled.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from fedcifar.data.cifar100 import DataError, resolve_data_dir

NUM_FINE_LABELS = 100


def meta_path(data_dir: str | Path | None) -> Path:
    return resolve_data_dir(data_dir) / "cifar-100-python" / "meta"


def read_fine_labels(data_dir: str | Path | None = None) -> tuple[str, ...]:
    """The 100 fine label names in class-id order."""
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import check_integrity

    path = meta_path(data_dir)
    if not path.exists():
        raise DataError(
            f"CIFAR-100 label names not found at {path}; pass --data-dir (or set FEDCIFAR_DATA_DIR) "
            "to the folder that holds cifar-100-python/"
        )
    if not check_integrity(str(path), CIFAR100.meta["md5"]):
        raise DataError(f"{path} is not the official CIFAR-100 meta file (MD5 mismatch)")
    with path.open("rb") as f:
        meta = pickle.load(f, encoding="latin1")
    names = tuple(str(n) for n in meta[CIFAR100.meta["key"]])
    if len(names) != NUM_FINE_LABELS:
        raise DataError(f"{path} lists {len(names)} fine labels, expected {NUM_FINE_LABELS}")
    return names
