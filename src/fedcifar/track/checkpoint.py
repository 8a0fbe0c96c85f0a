"""Checkpoints in safetensors: the exported global model and the resume checkpoint.

``checkpoint.safetensors`` is written last in a round, so it defines the last complete
round. It holds the global weights (``model.*``), the strategy's tensors (``strategy.*``),
the clients' own state where the backend holds it (``clients.*``, the simulator) and, in its
string metadata, a JSON document with the format version, the round, the config
and the strategy's metadata. No pickle: ``model_global.pth`` is a plain state_dict for the paper's name and
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from fedcifar.atomic import atomic_path
from fedcifar.config import Config, ConfigError, config_from_dict

CHECKPOINT_FILE = "checkpoint.safetensors"
MODEL_FILE = "model_global.safetensors"
MODEL_PTH_FILE = "model_global.pth"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint or model file is missing or unreadable. One line for the user."""


@dataclass(frozen=True)
class Checkpoint:
    round: int
    weights: dict[str, torch.Tensor]
    strategy_tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]  # config, model, strategy metadata, ...
    client_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the clients' own state


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(_cpu(tensors), str(tmp), metadata=metadata)


def export_global(run_dir: Path, weights: Mapping[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write ``model_global.safetensors`` (with ``info`` as metadata) and ``model_global.pth``."""
    cpu = _cpu(weights)
    _save_safetensors(run_dir / MODEL_FILE, cpu, {"fedcifar": json.dumps(info)})
    with atomic_path(run_dir / MODEL_PTH_FILE) as tmp:
        torch.save(cpu, tmp)


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    weights: Mapping[str, torch.Tensor],
    strategy_tensors: Mapping[str, torch.Tensor],
    meta: dict[str, Any],
    client_tensors: Mapping[str, torch.Tensor] | None = None,
) -> None:
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors.update({f"strategy.{k}": v for k, v in strategy_tensors.items()})
    tensors.update({f"clients.{k}": v for k, v in (client_tensors or {}).items()})
    doc = {"format": FORMAT_VERSION, "round": server_round, **meta}
    _save_safetensors(run_dir / CHECKPOINT_FILE, tensors, {"fedcifar": json.dumps(doc)})


def read_metadata(path: Path) -> Any:
    """The JSON document in a safetensors file's ``fedcifar`` metadata ({} when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("fedcifar", "{}")
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path}: its fedcifar metadata is not valid JSON") from None


def _checkpoint_doc(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata document, checked for what a resume reads from it."""
    meta = read_metadata(path)
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(f"{path} is not a fedcifar checkpoint (no fedcifar format in its metadata)")
    if meta["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of format {meta['format']!r}; this fedcifar reads {FORMAT_VERSION}"
        )
    rnd = meta.get("round")
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
        raise CheckpointError(f"{path}: the checkpoint's round must be an integer >= 1, got {rnd!r}")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("strategy", {}), dict):
        raise CheckpointError(f"{path}: the checkpoint's 'config' and 'strategy' must be JSON objects")
    return meta


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The last complete round of ``run_dir``; any file that is not a readable checkpoint is a CheckpointError."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {CHECKPOINT_FILE}); nothing to resume")
    meta = _checkpoint_doc(path)
    meta.pop("format")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({exc})") from None
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    strategy = {k.removeprefix("strategy."): v for k, v in tensors.items() if k.startswith("strategy.")}
    clients = {k.removeprefix("clients."): v for k, v in tensors.items() if k.startswith("clients.")}
    if not weights:
        raise CheckpointError(f"{path} holds no model weights (no 'model.*' tensors)")
    return Checkpoint(meta.pop("round"), weights, strategy, meta, clients)


def load_run(run_dir: Path) -> tuple[Checkpoint, Config]:
    """The checkpoint of ``run_dir`` and the config it was trained with (checked like any config)."""
    ckpt = load_checkpoint(run_dir)
    try:
        return ckpt, config_from_dict(ckpt.meta["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{Path(run_dir) / CHECKPOINT_FILE}: {exc}") from None


def check_weights(path: Path, weights: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Raise a one-line CheckpointError unless ``weights`` has exactly ``model``'s names, shapes and dtypes."""
    expected = model.state_dict()
    missing, extra = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(
            f"{path} does not hold this run's model: {len(missing) + len(extra)} names differ ({detail})"
        )
    for name, ref in expected.items():
        got = weights[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(
                f"{path} does not hold this run's model: {name} is {got.dtype} {tuple(got.shape)}, "
                f"expected {ref.dtype} {tuple(ref.shape)}"
            )


def load_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The exported model, rebuilt from its file alone (architecture from the metadata), in eval mode.

    The offline loader: ``model, info = load_model("runs/x/model_global.safetensors")``.
    """
    from fedcifar.model import ModelSpec, ModelSpecError

    weights, info = load_global(path)
    try:
        spec = ModelSpec.from_metadata(info)
    except ModelSpecError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model = spec.build()
        model.load_state_dict(weights, strict=True)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} does not hold a {spec.arch} model ({first})") from None
    return model.eval(), info


def load_global(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Exported weights and their metadata (round, norm, test accuracy, ...)."""
    meta = read_metadata(Path(path))
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable model file ({exc})") from None
