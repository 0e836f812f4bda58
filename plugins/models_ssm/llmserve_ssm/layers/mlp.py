"""The feed-forward blocks of the hybrid models.

Bamba uses Llama's gated SiLU MLP (``gate_proj`` and ``up_proj`` fused into one matmul, loaded
with ``GATE_UP_SHARDS``); NemotronH an ungated one with a squared ReLU (``up_proj``,
``down_proj``), whose names load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.layers.activation import SiluAndMul
from llmserve.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                    RowParallelLinear)
from llmserve.models.base import ModelBuildContext

#: checkpoint name fragment -> (fused parameter fragment, shard id)
GATE_UP_SHARDS = {
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


class GatedSiluMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool,
                 ctx: ModelBuildContext) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size, intermediate_size], bias=bias, dtype=ctx.dtype,
            linear_method=ctx.linear_method)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias,
                                           dtype=ctx.dtype, linear_method=ctx.linear_method)
        self.act_fn = SiluAndMul(ctx.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class Relu2MLP(nn.Module):
    """``down(relu(up(x)) ** 2)``: HF's ``relu2`` activation."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool,
                 ctx: ModelBuildContext) -> None:
        super().__init__()
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size, bias=bias,
                                            dtype=ctx.dtype, linear_method=ctx.linear_method)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias,
                                           dtype=ctx.dtype, linear_method=ctx.linear_method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.square(F.relu(self.up_proj(x))))
