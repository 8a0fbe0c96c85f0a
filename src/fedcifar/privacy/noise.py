"""Where DP noise comes from: the operating system's CSPRNG by default, a seed only on request.

``SecureNormal`` draws its uniforms from ``os.urandom`` (the kernel's CSPRNG), turns them into
standard normals by Box-Muller in float64, and returns the sum of four such draws halved (the
same variance), as Opacus's ``secure_mode`` does after Holohan and Braghin 2021, to blur the
low-order bits that floating-point attacks on Gaussian sampling read (Mironov 2012 for Laplace).
It is the one randomness in fedcifar that no seed fixes, on purpose.

``SeededNormal`` (``dp_seed`` > 0) is a ``torch.Generator``: reproducible, for tests and
studies only. Anyone who knows the seed can subtract the noise, so the run warns when it is on.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

_DRAWS = 4  # sum of four normals, halved: unit variance again


def _urandom_uniform(n: int) -> np.ndarray:
    """n floats uniform in (0, 1] with 53 random bits each, from os.urandom."""
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


def urandom_normal(n: int) -> np.ndarray:
    """n standard normals (float64) by Box-Muller on os.urandom uniforms."""
    half = -(-n // 2)
    u1, u2 = _urandom_uniform(half), _urandom_uniform(half)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * math.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


class SecureNormal:
    """Standard normal noise from the OS's CSPRNG (no seed, not reproducible)."""

    secure = True

    def __call__(self, shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        n = math.prod(shape)
        total = sum(urandom_normal(n) for _ in range(_DRAWS)) / math.sqrt(_DRAWS)
        return torch.from_numpy(total).reshape(shape).to(device=device, dtype=torch.float32)


class SeededNormal:
    """Standard normal noise from a seeded ``torch.Generator`` (reproducible; not private against
    anyone who knows the seed)."""

    secure = False

    def __init__(self, *seed: int) -> None:
        state = np.random.SeedSequence(list(seed)).generate_state(2, dtype=np.uint32)
        self.generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def __call__(self, shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).to(device)


def noise_source(dp_seed: int, *stream: int) -> SecureNormal | SeededNormal:
    """The CSPRNG when ``dp_seed`` is 0, else a generator seeded by (dp_seed, *stream)."""
    return SecureNormal() if dp_seed == 0 else SeededNormal(dp_seed, *stream)


def secure_rng(dp_seed: int, *stream: int) -> np.random.Generator:
    """A numpy generator for DP's sampling: 128 fresh bits from os.urandom, or (dp_seed, *stream).

    The amplification by sampling that the accountant claims holds only if who took part is
    unpredictable, so DP runs do not sample clients from the run's public ``seed``.
    """
    if dp_seed == 0:
        return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    return np.random.default_rng([dp_seed, 0xD9, *stream])
