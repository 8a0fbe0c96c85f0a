"""Batch-level augmentation and normalisation on uint8 image tensors (N, 3, H, W)."""

from __future__ import annotations

import torch

from fedcifar.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip, for a whole batch at once.

    Draws come from ``generator`` (which must live on ``x``'s device), so a batch's
    augmentation is reproducible.
    """
    n, _, h, w = x.shape
    device = x.device
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    rows = dy + torch.arange(h, device=device)  # (n, h)
    cols = dx + torch.arange(w, device=device)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Gather rows then columns; both indices broadcast over the channel dimension.
    out = padded.gather(2, rows[:, None, :, None].expand(n, x.shape[1], h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, x.shape[1], h, w))


class Normalize:
    """uint8 -> float, scaled to [0, 1] and standardised with the CIFAR-100 train statistics."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.mean = torch.tensor(CIFAR100_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(CIFAR100_STD, device=device).view(1, 3, 1, 1) * 255.0)

    def __call__(self, x: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
        out = (x.float() - self.mean) * self.inv_std
        return out.contiguous(memory_format=memory_format)
