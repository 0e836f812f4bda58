"""Gated activations."""

from __future__ import annotations

import torch
from torch import nn

from llmserve.layers.ops import TORCH_OPS, LayerOps


class SiluAndMul(nn.Module):
    """silu(x[..., :d]) * x[..., d:] for a fused gate+up projection output of width 2d."""

    def __init__(self, ops: LayerOps = TORCH_OPS) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.silu_and_mul(x)
