"""The Mamba2 mixer over the engine's flat batch: in_proj, causal conv, chunked SSD, gated
norm, out_proj, with each sequence's conv and SSM state in the engine's state slots.

Parameter names mirror the HF checkpoint (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``,
``D``, ``norm``, ``out_proj``), so loading is by name. ``in_proj`` produces, per token,
``[z (d_inner) | xBC (d_inner + 2 * n_groups * d_state) | dt (num_heads)]``; the conv runs
over xBC. Bamba, NemotronH and the other hybrids use this mixer unchanged, configured from
their own config keys (``Mamba2Dims``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmserve.layers.linear import LinearMethod, ReplicatedLinear
from llmserve_ssm.cache import MambaStateSpec, mamba_state_spec
from llmserve_ssm.layers.norm import GatedRMSNorm
from llmserve_ssm.layers.step import MambaStep


@dataclass(frozen=True)
class Mamba2Dims:
    """The sizes of a Mamba2 mixer, whatever config keys a family names them by."""

    hidden_size: int
    num_heads: int
    head_dim: int
    n_groups: int
    d_state: int
    conv_kernel: int
    chunk_size: int
    eps: float
    use_conv_bias: bool = True
    use_bias: bool = False
    dt_limit: tuple[float, float] = (0.0, math.inf)
    #: The SSM state's dtype name when it differs from the model's (``mamba_ssm_cache_dtype``).
    ssm_state_dtype: str | None = None

    @property
    def d_inner(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    def __post_init__(self) -> None:
        if self.num_heads % self.n_groups:
            raise ValueError(f"n_groups ({self.n_groups}) must divide the number of Mamba "
                             f"heads ({self.num_heads})")


class Mamba2Mixer(nn.Module):
    def __init__(self, dims: Mamba2Dims, cache_index: int, dtype: torch.dtype,
                 linear_method: LinearMethod | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.cache_index = cache_index
        d = dims
        self.in_proj = ReplicatedLinear(d.hidden_size, d.d_inner + d.conv_dim + d.num_heads,
                                        bias=d.use_bias, dtype=dtype, linear_method=linear_method)
        self.conv1d = nn.Module()
        self.conv1d.weight = nn.Parameter(torch.empty(d.conv_dim, 1, d.conv_kernel, dtype=dtype),
                                          requires_grad=False)
        self.conv1d.bias = (nn.Parameter(torch.empty(d.conv_dim, dtype=dtype), requires_grad=False)
                            if d.use_conv_bias else None)
        # A_log, D and dt_bias stay fp32 whatever the model dtype: they are tiny and the decay
        # exp(dt * A) is sensitive to them.
        self.A_log = nn.Parameter(torch.empty(d.num_heads, dtype=torch.float32),
                                  requires_grad=False)
        self.D = nn.Parameter(torch.empty(d.num_heads, dtype=torch.float32), requires_grad=False)
        self.dt_bias = nn.Parameter(torch.empty(d.num_heads, dtype=torch.float32),
                                    requires_grad=False)
        self.norm = GatedRMSNorm(d.d_inner, d.d_inner // d.n_groups, d.eps, dtype)
        self.out_proj = ReplicatedLinear(d.d_inner, d.hidden_size, bias=d.use_bias, dtype=dtype,
                                         linear_method=linear_method)
        self.state_dtype_bytes = dtype.itemsize

    def cache_spec(self) -> MambaStateSpec:
        d = self.dims
        return mamba_state_spec(d.conv_kernel, d.conv_dim, (d.num_heads, d.head_dim, d.d_state),
                                self.state_dtype_bytes, d.ssm_state_dtype)

    def forward(self, hidden: torch.Tensor, kv_caches: list, step: MambaStep) -> torch.Tensor:
        d, k = self.dims, step.kernels
        conv_state, ssm_state = kv_caches[self.cache_index]
        num_tokens = hidden.shape[0]
        z, xbc, dt = self.in_proj(hidden).split([d.d_inner, d.conv_dim, d.num_heads], dim=-1)
        weight, bias = self.conv1d.weight.squeeze(1), self.conv1d.bias
        if step.is_decode:
            xbc = k.conv1d_decode(xbc, weight, bias, conv_state, step.state_indices, "silu")
        else:
            xbc = k.conv1d_prefill(xbc, weight, bias, conv_state, step.state_indices,
                                   step.cu_seqlens, step.has_initial_state, "silu")
        x, B, C = xbc.split([d.d_inner, d.n_groups * d.d_state, d.n_groups * d.d_state], dim=-1)
        x = x.reshape(num_tokens, d.num_heads, d.head_dim)
        B = B.reshape(num_tokens, d.n_groups, d.d_state)
        C = C.reshape(num_tokens, d.n_groups, d.d_state)
        A = -torch.exp(self.A_log)
        if step.is_decode:
            y = k.ssd_decode(x, dt, A, B, C, self.D, None, self.dt_bias, True, ssm_state,
                             step.state_indices, d.dt_limit)
        else:
            y = k.ssd_prefill(x, dt, A, B, C, d.chunk_size, self.D, None, self.dt_bias, True,
                              ssm_state, step.state_indices, step.cu_seqlens,
                              step.has_initial_state, d.dt_limit)
        y = self.norm(y.reshape(num_tokens, d.d_inner), z)
        return self.out_proj(y)


def time_step_limit(cfg: dict) -> tuple[float, float]:
    """HF's ``time_step_limit`` (a pair, or absent for no clamp). transformers writes an
    infinite bound as ``{"__float__": "Infinity"}``."""
    limit = cfg.get("time_step_limit")
    if not limit:
        return (0.0, math.inf)

    def bound(value) -> float:
        return float(value["__float__"] if isinstance(value, dict) else value)

    return (bound(limit[0]), bound(limit[1]))
