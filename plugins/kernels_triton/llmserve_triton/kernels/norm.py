"""RMSNorm with an optional fused residual add, matching ``llmserve.layers.norm.RMSNorm``.

Rounding follows the reference step by step: ``x + residual`` is rounded to the input dtype
(it is also the new residual), the normalised value is rounded to the input dtype before the
weight multiplies it, and the output dtype is ``promote(x.dtype, weight.dtype)``. Sums of
squares are accumulated in fp32. One program per row; the whole row is one tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_triton.kernels.common import AotSpec, check_float, next_power_of_2, ptr
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning

#: Widest row one program handles in a single tile.
MAX_HIDDEN = 65536


@triton.jit
def rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
    stride_x, stride_r, stride_o, stride_ro,
    n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    normed = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * w).to(out_ptr.dtype.element_ty),
             mask=mask)


def _block(hidden: int) -> int:
    return next_power_of_2(hidden)


def _num_warps(block: int, tuning: KernelTuning) -> int:
    return tuning.warps(32 if block <= 256 else 128 if block <= 2048 else 256 if block <= 8192
                        else 512)


def _rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    t2 = t.reshape(-1, hidden)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
             residual_out: torch.Tensor | None = None, tuning: KernelTuning = DEFAULT_TUNING
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Like ``RMSNorm.forward``: norm(x), or (norm(x + residual), x + residual).

    x: [..., hidden]; weight: [hidden]. ``out`` / ``residual_out`` may be given (and may be
    ``x`` / ``residual`` themselves for an in-place update: each row is read before written).
    """
    check_float("x", x)
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight shape {tuple(weight.shape)} != ({hidden},)")
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} > {MAX_HIDDEN} is not supported")
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    if out is None:
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    elif out.dtype != out_dtype or out.shape != x.shape:
        raise ValueError(f"out must be {out_dtype} of shape {tuple(x.shape)}")
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError("residual must match x in shape and dtype")
        if residual_out is None:
            residual_out = torch.empty_like(x)
    x2 = _rows(x, hidden)
    o2 = out.view(-1, hidden)
    if residual is not None:
        r2, ro2 = _rows(residual, hidden), residual_out.view(-1, hidden)
    else:
        r2 = ro2 = x2  # unused: HAS_RESIDUAL is False
    num_rows = x2.shape[0]
    if num_rows:
        block = _block(hidden)
        rms_norm_kernel[(num_rows,)](
            x2, r2, weight, o2, ro2,
            x2.stride(0), r2.stride(0), o2.stride(0), ro2.stride(0),
            hidden, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=_num_warps(block, tuning),
        )
    return out if residual is None else (out, residual_out)


def aot_specs(dtype: torch.dtype, tuning: KernelTuning = DEFAULT_TUNING) -> list[AotSpec]:
    specs = []
    types = {n: "i32" for n in rms_norm_kernel.arg_names}
    types.update(x_ptr=ptr(dtype), residual_ptr=ptr(dtype), weight_ptr=ptr(dtype),
                 out_ptr=ptr(dtype), residual_out_ptr=ptr(dtype), eps="fp32")
    for hidden, has_residual in ((4096, True), (896, False), (128, False)):
        block = _block(hidden)
        specs.append(AotSpec(rms_norm_kernel, types,
                             {"HAS_RESIDUAL": has_residual, "BLOCK": block},
                             num_warps=_num_warps(block, tuning),
                             label=f"hidden{hidden}-residual{int(has_residual)}"))
    return specs
