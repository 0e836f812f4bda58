"""RMSNorm with an optional fused residual add."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from llmserve.layers.ops import TORCH_OPS, LayerOps


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype = torch.float32,
                 ops: LayerOps = TORCH_OPS):
        super().__init__()
        self.eps = eps
        self.ops = ops
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Without ``residual``: norm(x). With it: (norm(x + residual), x + residual).
        Any leading shape; normalises the last dimension."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if residual is None:
            return self.ops.rms_norm(flat, self.weight, self.eps).view(shape)
        out, res = self.ops.rms_norm(flat, self.weight, self.eps, residual.reshape(-1, shape[-1]))
        return out.view(shape), res.view(shape)
