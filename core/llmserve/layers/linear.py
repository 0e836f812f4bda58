"""Tensor-parallel linear layers with per-layer weight loaders and a pluggable linear method.

Each layer owns its slice of the full weight: column-parallel layers split the output
dimension, row-parallel layers the input dimension. Fused layers (QKV, gate+up) hold several
checkpoint tensors side by side; their ``weight_loader`` takes a shard id and copies each
checkpoint tensor into its place, so checkpoints load by name without a conversion step.
How the matmul is done (plain, FP8, LoRA-wrapped) is a ``LinearMethod``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.distributed.parallel_state import all_reduce, get_tp_rank, get_tp_world_size


class LinearMethod:
    """Creates a layer's parameters and applies it; subclass for quantized or adapted layers."""

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       bias: bool, dtype: torch.dtype) -> None:
        layer.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype),
                                    requires_grad=False)
        layer.bias = (nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False)
                      if bias else None)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)


UNQUANTIZED = LinearMethod()


def _divide(n: int, d: int) -> int:
    if n % d:
        raise ValueError(f"{n} is not divisible by the tensor-parallel size {d}")
    return n // d


class _LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 linear_method: Optional[LinearMethod]) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.linear_method = linear_method or UNQUANTIZED
        self.linear_method.create_weights(self, in_features, out_features, bias, dtype)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if self.bias is not None:
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: Union[str, int, None] = None) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"


class ReplicatedLinear(_LinearBase):
    """A linear layer every rank holds in full."""

    def weight_loader(self, param, loaded, shard_id=None):
        param.data.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_method.apply(self, x, self.bias)


class ColumnParallelLinear(_LinearBase):
    """Splits the output dimension: rank r holds rows [r*out/tp, (r+1)*out/tp)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32,
                 linear_method: Optional[LinearMethod] = None) -> None:
        self.tp_size = get_tp_world_size()
        self.tp_rank = get_tp_rank()
        super().__init__(in_features, _divide(out_features, self.tp_size), bias, dtype,
                         linear_method)

    def weight_loader(self, param, loaded, shard_id=None):
        size = param.shape[0]
        param.data.copy_(loaded.narrow(0, self.tp_rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_method.apply(self, x, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (e.g. gate_proj and up_proj).

    ``shard_id`` is the index of the checkpoint tensor in ``output_sizes``.
    """

    def __init__(self, in_features: int, output_sizes: Sequence[int], bias: bool = False,
                 dtype: torch.dtype = torch.float32,
                 linear_method: Optional[LinearMethod] = None) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(in_features, sum(output_sizes), bias, dtype, linear_method)

    def weight_loader(self, param, loaded, shard_id=None):
        assert isinstance(shard_id, int)
        local = [s // self.tp_size for s in self.output_sizes]
        offset = sum(local[:shard_id])
        size = local[shard_id]
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, self.tp_rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """Query, key and value projections in one matmul; ``shard_id`` is "q", "k" or "v".

    With more ranks than key/value heads, KV heads are replicated across ranks.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, dtype: torch.dtype = torch.float32,
                 linear_method: Optional[LinearMethod] = None) -> None:
        tp = get_tp_world_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, tp)
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias, dtype, linear_method)

    def weight_loader(self, param, loaded, shard_id=None):
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        offset, size, rank = {"q": (0, q, self.tp_rank),
                              "k": (q, kv, self.tp_rank // self.kv_replicas),
                              "v": (q + kv, kv, self.tp_rank // self.kv_replicas)}[shard_id]
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, rank * size, size))


class RowParallelLinear(_LinearBase):
    """Splits the input dimension; partial products are summed across ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32,
                 linear_method: Optional[LinearMethod] = None) -> None:
        self.tp_size = get_tp_world_size()
        self.tp_rank = get_tp_rank()
        super().__init__(_divide(in_features, self.tp_size), out_features, bias, dtype,
                         linear_method)

    def weight_loader(self, param, loaded, shard_id=None):
        if param.dim() == 1:  # bias: added once, after the reduction
            param.data.copy_(loaded)
            return
        size = param.shape[1]
        param.data.copy_(loaded.narrow(1, self.tp_rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear_method.apply(self, x, None)
        out = all_reduce(out)
        return out if self.bias is None else out + self.bias
