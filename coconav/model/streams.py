"""Per-trajectory random streams: deterministic noise from (seed, step, index), one stream per row.

With K trajectories per question every row of a batch owns a seed; its noise at a given step depends
on that seed and the step only, never on which other rows share the batch. So K trajectories rolled
out together from a shared prefix draw exactly what K single rollouts with the same seeds draw (a
tested property), and a trajectory can be re-run alone. The noise is a counter-based hash (32-bit
integer mixing, as in lowbias32) turned into uniforms, normals (Box-Muller) and categorical draws
(inverse CDF); it is vectorised over rows and the same on every device.

    seeds = stream_seeds(torch.Generator().manual_seed(0), 6)       # [6]
    noise = stream_normal(seeds, step=2, size=16, salt=STEER)        # [6, 16]
"""

from __future__ import annotations

import math

import torch

MASK = 0xFFFFFFFF
STEER, HALT, TOKEN = 1, 2, 3  # salts: steering noise, halting draws and answer tokens are separate streams


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (values kept in [0, 2^32) inside int64, so products never overflow)."""
    x = x & MASK
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & MASK
    x = ((x ^ (x >> 15)) * 0x846CA68B) & MASK
    return x ^ (x >> 16)


def stream_seeds(generator: torch.Generator | None, n: int) -> torch.Tensor:
    """n fresh stream seeds in [0, 2^31) from a torch generator (None: the global one) on its device. Shape: [n] (CPU)."""
    device = generator.device if generator is not None else None
    return torch.randint(0, 2**31 - 1, (n,), generator=generator, dtype=torch.long, device=device).cpu()


def stream_uniform(seeds: torch.Tensor, step: int, size: int, salt: int) -> torch.Tensor:
    """Uniforms in (0, 1), float32. Shape: seeds [B] -> [B, size]; a function of (seed, step, salt, index)."""
    idx = torch.arange(size, dtype=torch.long, device=seeds.device)
    x = _mix(seeds.long()[:, None] ^ _mix(torch.tensor(salt * 1_000_003 + step, device=seeds.device)))
    x = _mix(x + idx[None] * 0x9E3779B9)
    return ((x.double() + 0.5) / 2**32).float()


def stream_normal(seeds: torch.Tensor, step: int, size: int, salt: int = STEER) -> torch.Tensor:
    """Standard normals (Box-Muller over two uniform streams). Shape: seeds [B] -> [B, size]."""
    u = stream_uniform(seeds, step, 2 * size, salt).double()
    u1, u2 = u[:, :size], u[:, size:]
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()


def stream_categorical(probs: torch.Tensor, seeds: torch.Tensor, step: int, salt: int = TOKEN) -> torch.Tensor:
    """One draw per row by inverse CDF. Shape: probs [B, V] (rows sum to 1), seeds [B] -> [B] (long)."""
    u = stream_uniform(seeds, step, 1, salt).to(probs.device)  # [B, 1]
    cdf = probs.double().cumsum(-1)
    cdf = cdf / cdf[:, -1:].clamp(min=1e-30)
    token = torch.searchsorted(cdf, u.double(), right=True).squeeze(-1)
    # never past the last token with mass (float rounding at the top of the CDF)
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).long().argmax(-1)
    return torch.minimum(token, last)
