"""What many tests share: the tiny run config, image bytes, waiting on a process, how far a run moved.

Importable from any test (pyproject puts tests/ on the path): ``from helpers import TINY, tiny_config``.
"""

from __future__ import annotations

import io
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from fedcifar.config import Config, build_config

T = TypeVar("T")

# A run on real CIFAR-100 that takes seconds: ResNet-20, 4 clients, 2 a round, one minibatch each.
TINY: dict[str, Any] = {
    "model": "resnet20",
    "num_clients": 4,
    "clients_per_round": 2,
    "rounds": 2,
    "local_steps": 1,
    "batch_size": 16,
    "eval_limit": 64,
    "workers": 2,
}


def tiny(**over: Any) -> dict[str, Any]:
    """TINY with ``over`` on top; an override of None drops the key (the preset's value then holds)."""
    values = {**TINY, **over}
    return {k: v for k, v in values.items() if v is not None}


def tiny_config(preset: str = "smoke", **over: Any) -> Config:
    """``preset`` with :func:`tiny` ``(**over)`` applied, as ``--preset PRESET --set k=v ...`` builds it."""
    return build_config(preset, None, tiny(**over))


def set_args(values: Mapping[str, Any]) -> list[str]:
    """``--set k=v`` for each item, for a CLI command line."""
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


# --- image bytes -------------------------------------------------------------------------------


def encode(image: Image.Image | np.ndarray | torch.Tensor, fmt: str = "PNG", **kw: Any) -> bytes:
    """The file bytes of an image: a PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor."""
    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def random_png(seed: int, size: int = 32) -> bytes:
    """A PNG of uniform noise, the same for the same seed."""
    return encode(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk (length, type, data, CRC), for PNGs that Pillow will not write."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_from_chunks(header: bytes, data: bytes) -> bytes:
    """A PNG written by hand: signature, IHDR ``header``, one IDAT of ``data`` compressed, IEND."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(data))
        + png_chunk(b"IEND", b"")
    )


# --- waiting on processes ----------------------------------------------------------------------


def _ended(proc: Any) -> str | None:
    """How ``proc`` (a Popen or a multiprocessing.Process) ended, or None while it runs."""
    if isinstance(proc, subprocess.Popen):
        return None if proc.poll() is None else f"exited with {proc.returncode}"
    return None if proc.is_alive() else f"exited with {proc.exitcode}"


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str = "the condition",
    proc: Any = None,
    log: Path | None = None,
    interval: float = 0.2,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails as soon as ``proc`` (a Popen or a multiprocessing.Process) ends, or after ``timeout``
    seconds, saying what it waited for and, with ``log``, the end of that file.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        ended = _ended(proc) if proc is not None else None
        late = time.monotonic() > deadline
        if ended or late:
            tail = f":\n{log.read_text(errors='replace')[-3000:]}" if log is not None and log.exists() else ""
            reason = f"the process {ended}" if ended else f"timed out after {timeout:g} s"
            raise AssertionError(f"{reason} while waiting for {what}{tail}")
        time.sleep(interval)
    return value


# --- how far a run moved and how much it learnt ------------------------------------------------


def weight_step(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor]) -> float:
    """The L2 distance between two state dicts over trained parameters (not BatchNorm statistics)."""
    from fedcifar.model.spec import is_trained

    keys = [k for k, v in start.items() if is_trained(k, v)]
    return float(torch.sqrt(sum(((end[k].double() - start[k].double()) ** 2).sum() for k in keys)))


def loss_on(cfg: Config, weights: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of ``weights`` (a model of ``cfg``'s architecture) on uint8 ``images``, in eval mode."""
    from fedcifar.client.evaluate import eval_counts
    from fedcifar.federation import model_spec
    from fedcifar.runtime import resolve_runtime

    runtime = resolve_runtime(cfg.replace(compile="off", precision="fp32"))  # the measure, not the run
    model = runtime.prepare(model_spec(cfg).build())
    return eval_counts(model, dict(weights), images, labels, runtime, 256, fold_bn=False).scores()["loss"]


def batch_stats_loss(
    cfg: Config, weights: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor
) -> float:
    """Mean cross-entropy with BatchNorm on the batch's own statistics (train mode, nothing updated).

    What the trained parameters learnt, whatever the running statistics are: in eval mode a
    model whose parameters never moved still "improves" once it gets any real statistics.
    """
    from fedcifar.data.augment import Normalize
    from fedcifar.federation import model_spec

    model = model_spec(cfg).build()
    model.load_state_dict(dict(weights))
    model.train()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(Normalize()(images)).float(), labels))


def client_images(cfg: Config, data: Any, client_ids: Iterable[int], n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of ``n`` training images (and labels) from the given clients' shards."""
    from fedcifar.federation import partition_for

    parts = partition_for(cfg, data.train_y.numpy())
    idx = torch.as_tensor(np.concatenate([parts[c] for c in sorted(set(client_ids))]))
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:n]]
    return data.train_x[idx], data.train_y[idx]


def run_and_weights(
    cfg: Config, run_dir: Path, data: Any
) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train ``cfg`` into ``run_dir``: its metrics frame, the initial weights and the exported global ones."""
    from safetensors.torch import load_file

    from fedcifar.federation import model_spec
    from fedcifar.sim.engine import run_training

    frame = run_training(cfg, run_dir, data, progress=False)
    start = model_spec(cfg).build(seed=cfg.seed).state_dict()
    return frame, start, load_file(Path(run_dir) / "model_global.safetensors")
