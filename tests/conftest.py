"""Shared fixtures. Real-data tests read CIFAR-100 from FEDCIFAR_DATA_DIR (../shared/data here).

Without the data, a session that selected any test needing it stops at once with one line
that says where to put it, instead of erroring in every such test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDCIFAR_DATA_DIR", str(ROOT.parent / "shared" / "data"))
CIFAR_FILES = ("train", "test", "meta")  # the official python version's files, in cifar-100-python/


def missing_data_message() -> str | None:
    """One line naming what is missing and where it belongs, or None when CIFAR-100 is in place."""
    folder = Path(os.environ["FEDCIFAR_DATA_DIR"]) / "cifar-100-python"
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if not missing:
        return None
    return (
        f"CIFAR-100 is not at FEDCIFAR_DATA_DIR={os.environ['FEDCIFAR_DATA_DIR']} (no {', '.join(missing)} in "
        f"{folder}): set FEDCIFAR_DATA_DIR to the folder that holds cifar-100-python/ (the official python "
        "version of CIFAR-100; the tests never download it)"
    )


def pytest_collection_modifyitems(session, config, items) -> None:
    """Stop the session in one line when a selected test reads CIFAR-100 and it is not there."""
    if not any("cifar" in getattr(item, "fixturenames", ()) for item in items):
        return
    message = missing_data_message()
    if message:
        pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def cifar():
    """CIFAR-100 loaded once for the session (the real files, never downloaded in tests)."""
    from fedcifar.data.cifar100 import load_cifar100

    return load_cifar100(download=False)
