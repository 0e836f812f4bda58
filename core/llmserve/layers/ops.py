"""The elementwise kernels layers call, as one swappable table.

Layers hold an ``ops`` table and call through it, so a platform can hand the model fused
kernels (``Platform.layer_ops()``) without touching model code. ``TORCH_OPS`` is the
reference: plain torch, the numerics every other table is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   residual: Optional[torch.Tensor] = None
                   ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """norm(x) * weight, or with ``residual``: (norm(x + residual) * weight, x + residual).
    Computed in float32 and cast back before the weight, as the HF reference does."""
    if residual is not None:
        x = x + residual
    dtype = x.dtype
    xf = x.float()
    out = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    return out if residual is None else (out, x)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def torch_rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                 cos_cache: torch.Tensor, sin_cache: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q [T, H, D] and k [T, KVH, D] at each token's position."""
    cos = cos_cache[positions].unsqueeze(1).to(q.dtype)
    sin = sin_cache[positions].unsqueeze(1).to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def torch_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


@dataclass(frozen=True)
class LayerOps:
    name: str
    rms_norm: Callable[..., Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]


TORCH_OPS = LayerOps("torch", torch_rms_norm, torch_rotary, torch_silu_and_mul)
