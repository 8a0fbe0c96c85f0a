"""Shared fixtures. Real-data tests read CIFAR-100 from FEDCIFAR_DATA_DIR (../shared/data here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDCIFAR_DATA_DIR", str(ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def cifar():
    """CIFAR-100 loaded once for the session (the real files, never downloaded in tests)."""
    from fedcifar.data.cifar100 import load_cifar100

    return load_cifar100(download=False)
