"""The Mamba1 mixer over the engine's flat batch: in_proj, causal conv, x_proj, dt_proj,
selective scan, out_proj, with each sequence's conv and SSM state in the engine's state slots.

Parameter names mirror the HF checkpoint (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``,
``A_log``, ``D``, ``out_proj``), so loading is by name. ``in_proj`` produces, per token,
``[x (d_inner) | z (d_inner)]``; the conv runs over x, and ``x_proj`` of its output gives
``[dt (dt_rank) | B (d_state) | C (d_state)]``. As in HF, ``dt_proj`` is only its weight's
matmul: its bias is the scan's ``delta_bias``, added in fp32 before the softplus.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from llmserve.layers.linear import LinearMethod, ReplicatedLinear
from torch import nn

from llmserve_ssm.cache import MambaStateSpec, mamba_state_spec
from llmserve_ssm.layers.step import MambaStep


@dataclass(frozen=True)
class MambaDims:
    """The sizes of a Mamba1 mixer, whatever config keys a family names them by."""

    hidden_size: int
    d_inner: int
    d_state: int
    dt_rank: int
    conv_kernel: int
    use_conv_bias: bool = True
    use_bias: bool = False
    #: The conv's activation (HF's ``hidden_act``).
    activation: str = "silu"


class MambaMixer(nn.Module):
    def __init__(self, dims: MambaDims, cache_index: int, dtype: torch.dtype,
                 linear_method: LinearMethod | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.cache_index = cache_index
        d = dims
        self.in_proj = ReplicatedLinear(d.hidden_size, 2 * d.d_inner, bias=d.use_bias,
                                        dtype=dtype, linear_method=linear_method)
        self.conv1d = nn.Module()
        self.conv1d.weight = nn.Parameter(torch.empty(d.d_inner, 1, d.conv_kernel, dtype=dtype),
                                          requires_grad=False)
        self.conv1d.bias = (nn.Parameter(torch.empty(d.d_inner, dtype=dtype), requires_grad=False)
                            if d.use_conv_bias else None)
        self.x_proj = ReplicatedLinear(d.d_inner, d.dt_rank + 2 * d.d_state, bias=False,
                                       dtype=dtype, linear_method=linear_method)
        # A bare weight and bias rather than a linear layer: the bias belongs to the scan.
        self.dt_proj = nn.Module()
        self.dt_proj.weight = nn.Parameter(torch.empty(d.d_inner, d.dt_rank, dtype=dtype),
                                           requires_grad=False)
        # A_log, D and the dt bias stay fp32 whatever the model dtype: they are small and the
        # decay exp(dt * A) is sensitive to them.
        self.dt_proj.bias = nn.Parameter(torch.empty(d.d_inner, dtype=torch.float32),
                                         requires_grad=False)
        self.A_log = nn.Parameter(torch.empty(d.d_inner, d.d_state, dtype=torch.float32),
                                  requires_grad=False)
        self.D = nn.Parameter(torch.empty(d.d_inner, dtype=torch.float32), requires_grad=False)
        self.out_proj = ReplicatedLinear(d.d_inner, d.hidden_size, bias=d.use_bias, dtype=dtype,
                                         linear_method=linear_method)
        self.state_dtype_bytes = dtype.itemsize

    def cache_spec(self) -> MambaStateSpec:
        d = self.dims
        return mamba_state_spec(d.conv_kernel, d.d_inner, (d.d_inner, d.d_state),
                                self.state_dtype_bytes)

    def forward(self, hidden: torch.Tensor, kv_caches: list, step: MambaStep) -> torch.Tensor:
        d, k = self.dims, step.kernels
        conv_state, ssm_state = kv_caches[self.cache_index]
        x, z = self.in_proj(hidden).split([d.d_inner, d.d_inner], dim=-1)
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
        if step.is_decode:
            x = k.conv1d_decode(x, weight, bias, conv_state, step.state_indices, d.activation)
        else:
            x = k.conv1d_prefill(x, weight, bias, conv_state, step.state_indices,
                                 step.cu_seqlens, step.has_initial_state, d.activation)
        dt, B, C = self.x_proj(x).split([d.dt_rank, d.d_state, d.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log)
        if step.is_decode:
            y = k.selective_scan_decode(x, dt, A, B, C, self.D, z, self.dt_proj.bias, True,
                                        ssm_state, step.state_indices)
        else:
            y = k.selective_scan_prefill(x, dt, A, B, C, self.D, z, self.dt_proj.bias, True,
                                         ssm_state, step.state_indices, step.cu_seqlens,
                                         step.has_initial_state)
        return self.out_proj(y)
