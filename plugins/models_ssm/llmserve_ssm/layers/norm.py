"""Mamba2's gated RMSNorm: ``norm(y * silu(z))`` over groups of channels.

Mamba2 normalises the scan output after gating it, each of the ``n_groups`` channel groups
on its own (a group is the slice of heads that shares B and C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, group_size: int, eps: float,
                 dtype: torch.dtype) -> None:
        super().__init__()
        if hidden_size % group_size:
            raise ValueError(f"group_size {group_size} must divide hidden_size {hidden_size}")
        self.group_size = group_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """y, gate: [T, hidden]; fp32 inside, the weight's dtype out."""
        x = y.float() * F.silu(gate.float())
        groups = x.view(*x.shape[:-1], -1, self.group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.view(x.shape).to(self.weight.dtype)
