"""Rotary position embeddings (rotate-half layout, as HF Llama) with llama3 and linear scaling."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from llmserve.layers.ops import TORCH_OPS, LayerOps

SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


def _inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths divided by ``factor``, short ones kept,
    a smooth blend in between."""
    factor = p["factor"]
    low, high = p.get("low_freq_factor", 1.0), p.get("high_freq_factor", 4.0)
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Precomputes cos/sin for every position up to ``max_position`` (float32) and rotates
    q and k of a flattened token batch by each token's own position."""

    def __init__(self, head_dim: int, max_position: int, theta: float,
                 rope_params: Optional[dict[str, Any]] = None, ops: LayerOps = TORCH_OPS) -> None:
        super().__init__()
        self.ops = ops
        params = dict(rope_params or {})
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope type {rope_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        inv_freq = _inv_freq(head_dim, theta)
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        elif rope_type == "linear":
            inv_freq = inv_freq / params["factor"]
        positions = torch.arange(max_position, dtype=torch.int64).float()
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cache", emb.cos(), persistent=False)
        self.register_buffer("sin_cache", emb.sin(), persistent=False)
        self.head_dim = head_dim

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, H, D], k: [T, KVH, D], positions: [T]."""
        return self.ops.rotary(positions, q, k, self.cos_cache, self.sin_cache)


_ROPE_CACHE: dict[tuple, RotaryEmbedding] = {}


def get_rope(head_dim: int, max_position: int, theta: float,
             rope_params: Optional[dict[str, Any]] = None,
             ops: LayerOps = TORCH_OPS) -> RotaryEmbedding:
    """A shared RotaryEmbedding: every layer of a model uses the same cos/sin tables. Keyed
    by the rotary op itself, so tables that differ only in other ops share one."""
    key = (head_dim, max_position, theta, repr(sorted((rope_params or {}).items())),
           str(torch.get_default_device()), ops.rotary)
    rope = _ROPE_CACHE.get(key)
    if rope is None:
        rope = _ROPE_CACHE[key] = RotaryEmbedding(head_dim, max_position, theta, rope_params,
                                                  ops)
    return rope
