"""SiLU-and-mul: ``silu(x[..., :d]) * x[..., d:]`` for a fused gate+up projection output.

Computed in fp32 and rounded once (the torch reference rounds after the SiLU and after the
product, so the two agree to about one unit in the last place).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_triton.kernels.common import AotSpec, check_float, next_power_of_2, ptr
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning

BLOCK = 1024


@triton.jit
def silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, d, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _block(d: int) -> int:
    return min(BLOCK, next_power_of_2(d))


def _num_warps(block: int, tuning: KernelTuning) -> int:
    return tuning.warps(128 if block >= 512 else 32)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None, *,
                 tuning: KernelTuning = DEFAULT_TUNING) -> torch.Tensor:
    """x: [..., 2d] -> [..., d] in x's dtype."""
    check_float("x", x)
    two_d = x.shape[-1]
    if two_d % 2:
        raise ValueError(f"last dim must be even, got {two_d}")
    d = two_d // 2
    x2 = x.reshape(-1, two_d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if out is None:
        out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    o2 = out.view(-1, d)
    if x2.shape[0] and d:
        block = _block(d)
        silu_and_mul_kernel[(x2.shape[0], triton.cdiv(d, block))](
            x2, o2, x2.stride(0), o2.stride(0), d, BLOCK=block,
            num_warps=_num_warps(block, tuning))
    return out


def aot_specs(dtype: torch.dtype, tuning: KernelTuning = DEFAULT_TUNING) -> list[AotSpec]:
    types = {"x_ptr": ptr(dtype), "out_ptr": ptr(dtype), "stride_x": "i32", "stride_o": "i32",
             "d": "i32"}
    return [AotSpec(silu_and_mul_kernel, types, {"BLOCK": _block(d)},
                    num_warps=_num_warps(_block(d), tuning), label=f"d{d}")
            for d in (14336, 64)]
