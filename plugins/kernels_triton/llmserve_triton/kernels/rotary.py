"""Rotary position embedding (rotate-half / NeoX layout, as HF Llama) for q and k together.

The cos/sin tables are ``RotaryEmbedding.cos_cache`` / ``sin_cache``: [max_position, D] with
identical halves (or just [max_position, D/2]); only the first D/2 columns are read. As in
the reference, the table values are rounded to q's dtype before use; the rotation itself is
computed in fp32 and rounded once. One program per token rotates all its q and k heads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_triton.kernels.common import AotSpec, check_float, next_power_of_2, ptr
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning


@triton.jit
def _rotate_heads(x_ptr, out_ptr, stride_head, stride_out_head, cos, sin, num_heads,
                  HALF: tl.constexpr, HEADS_P: tl.constexpr, HALF_P: tl.constexpr):
    heads = tl.arange(0, HEADS_P)
    cols = tl.arange(0, HALF_P)
    mask = (heads[:, None] < num_heads) & (cols[None, :] < HALF)
    src = x_ptr + heads[:, None] * stride_head + cols[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * cos[None, :] - x2 * sin[None, :]
    y2 = x2 * cos[None, :] + x1 * sin[None, :]
    dst = out_ptr + heads[:, None] * stride_out_head + cols[None, :]
    tl.store(dst, y1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, y2.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rotary_kernel(
    positions_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr, cos_ptr, sin_ptr,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head,
    stride_qo_tok, stride_qo_head, stride_ko_tok, stride_ko_head, stride_cache,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
    HEADS_P: tl.constexpr, KV_HEADS_P: tl.constexpr, HALF_P: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    cols = tl.arange(0, HALF_P)
    dtype = q_ptr.dtype.element_ty
    cos = tl.load(cos_ptr + pos * stride_cache + cols, mask=cols < HALF, other=0.0)
    sin = tl.load(sin_ptr + pos * stride_cache + cols, mask=cols < HALF, other=0.0)
    cos = cos.to(dtype).to(tl.float32)
    sin = sin.to(dtype).to(tl.float32)
    _rotate_heads(q_ptr + token * stride_q_tok, q_out_ptr + token * stride_qo_tok,
                  stride_q_head, stride_qo_head, cos, sin, NUM_HEADS, HALF, HEADS_P, HALF_P)
    _rotate_heads(k_ptr + token * stride_k_tok, k_out_ptr + token * stride_ko_tok,
                  stride_k_head, stride_ko_head, cos, sin, NUM_KV_HEADS, HALF, KV_HEADS_P,
                  HALF_P)


def _constexprs(num_heads: int, num_kv_heads: int, head_dim: int) -> dict:
    half = head_dim // 2
    return {"NUM_HEADS": num_heads, "NUM_KV_HEADS": num_kv_heads, "HALF": half,
            "HEADS_P": next_power_of_2(num_heads), "KV_HEADS_P": next_power_of_2(num_kv_heads),
            "HALF_P": next_power_of_2(half)}


def _num_warps(num_heads: int, head_dim: int, tuning: KernelTuning) -> int:
    return tuning.warps(128 if num_heads * head_dim >= 2048 else 32)


def rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
           cos_cache: torch.Tensor, sin_cache: torch.Tensor, *, inplace: bool = False,
           q_out: torch.Tensor | None = None, k_out: torch.Tensor | None = None,
           tuning: KernelTuning = DEFAULT_TUNING) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``RotaryEmbedding.forward(positions, q, k)``: q [T, H, D], k [T, KVH, D],
    positions [T]. Returns new tensors, or rotates q and k in place with ``inplace=True``."""
    check_float("q", q)
    if k.dtype != q.dtype:
        raise TypeError(f"k dtype {k.dtype} != q dtype {q.dtype}")
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if k.shape[0] != num_tokens or k.shape[2] != head_dim or head_dim % 2:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not match "
                         "(or head_dim is odd)")
    if cos_cache.shape != sin_cache.shape or cos_cache.shape[-1] not in (head_dim, head_dim // 2):
        raise ValueError(f"cos/sin cache {tuple(cos_cache.shape)} does not fit head_dim {head_dim}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos_cache.stride(-1) != 1:
        raise ValueError("q, k and the caches must be contiguous in the last dim")
    if cos_cache.stride() != sin_cache.stride():
        raise ValueError("cos_cache and sin_cache must have the same strides")
    if inplace:
        q_out, k_out = q, k
    q_out = torch.empty_like(q) if q_out is None else q_out
    k_out = torch.empty_like(k) if k_out is None else k_out
    if num_tokens:
        rotary_kernel[(num_tokens,)](
            positions, q, k, q_out, k_out, cos_cache, sin_cache,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
            cos_cache.stride(0),
            num_warps=_num_warps(num_heads, head_dim, tuning),
            **_constexprs(num_heads, num_kv_heads, head_dim),
        )
    return q_out, k_out


def aot_specs(dtype: torch.dtype, tuning: KernelTuning = DEFAULT_TUNING) -> list[AotSpec]:
    types = {n: "i32" for n in rotary_kernel.arg_names}
    types.update(positions_ptr="*i64", q_ptr=ptr(dtype), k_ptr=ptr(dtype), q_out_ptr=ptr(dtype),
                 k_out_ptr=ptr(dtype), cos_ptr="*fp32", sin_ptr="*fp32")
    return [AotSpec(rotary_kernel, types, _constexprs(h, kvh, d),
                    num_warps=_num_warps(h, d, tuning), label=f"h{h}-kvh{kvh}-d{d}")
            for h, kvh, d in ((32, 8, 128), (14, 2, 64))]
