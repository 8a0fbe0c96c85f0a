"""Warm ClientApps patch Flower internals: on any other Flower, or a missing symbol, they fail loudly."""

from __future__ import annotations

import importlib.metadata
import types

import pytest

pytest.importorskip("flwr")

from fedcifar.flower import warm  # noqa: E402


def test_a_patch_of_another_flower_fails_loudly(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "1.42.0" if n == "flwr" else real(n))
    with pytest.raises(warm.FlowerInternalsError, match=r"start_client_internal\.time.*flwr 1\.42\.0"):
        warm._patch(types.ModuleType("flwr.supernode.start_client_internal"), "time", None)


def test_a_patch_of_a_missing_symbol_fails_loudly():
    with pytest.raises(warm.FlowerInternalsError, match="has no"):
        warm._patch(types.ModuleType("m"), "time", None)
