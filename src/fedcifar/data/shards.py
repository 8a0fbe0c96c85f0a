"""One file per client: what a SuperNode of a real federation holds, and nothing more.

``fedcifar partition ... --export DIR`` writes ``client-0007.safetensors`` for client 7: its
uint8 images (n, 3, 32, 32) and int64 labels, and in the metadata the client id, the number
of clients and a SHA-256 of both tensors. A node loads only its own shard; a missing,
unreadable, tampered or misnamed shard is a one-line :class:`DataError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from fedcifar.atomic import atomic_path
from fedcifar.data.cifar100 import DataError

SHARD_FORMAT = 1
META_KEY = "fedcifar-shard"


def shard_path(directory: str | Path, client_id: int) -> Path:
    return Path(directory) / f"client-{client_id:04d}.safetensors"


def checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_shards(
    train_x: torch.Tensor, train_y: torch.Tensor, partition: Sequence[np.ndarray], directory: str | Path
) -> list[Path]:
    """Write each client's shard of the training set; returns the paths."""
    paths = []
    for cid, idx in enumerate(partition):
        index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        images, labels = train_x[index].contiguous(), train_y[index].to(torch.int64).contiguous()
        meta = {"format": SHARD_FORMAT, "client": cid, "num_clients": len(partition), "n": len(labels)}
        meta["sha256"] = checksum(images, labels)
        path = shard_path(directory, cid)
        with atomic_path(path) as tmp:
            save_file({"images": images, "labels": labels}, str(tmp), metadata={META_KEY: json.dumps(meta)})
        paths.append(path)
    return paths


def load_shard(path: str | Path, client_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of one client's shard, checked against its checksum (and client id)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "null"))
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise DataError(f"client shard not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable client shard ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT or set(tensors) != {"images", "labels"}:
        raise DataError(f"{path} is not a fedcifar client shard")
    images, labels = tensors["images"], tensors["labels"]
    if images.dtype != torch.uint8 or images.shape[1:] != (3, 32, 32) or labels.shape != (images.shape[0],):
        raise DataError(f"{path}: images must be uint8 (n, 3, 32, 32) with one label each")
    if checksum(images, labels) != meta.get("sha256"):
        raise DataError(f"{path}: checksum mismatch, the shard is corrupt")
    if client_id is not None and meta.get("client") != client_id:
        raise DataError(f"{path} holds client {meta.get('client')}, not client {client_id}")
    return images, labels
