"""reshape_and_cache: write the new tokens' K and V into the paged cache.

The cache is one tensor per layer shaped ``(2, num_blocks, block_size, num_kv_heads,
head_dim)`` (the core's default layout, see ``TritonPagedAttention.kv_cache_shape``); token
``t`` goes to block ``slot_mapping[t] // block_size``, row ``slot_mapping[t] % block_size``.
A negative slot (padding tokens of a captured CUDA graph) is skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_triton.kernels.common import AotSpec, check_float, next_power_of_2, ptr
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning


@triton.jit
def reshape_and_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr,
    stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
    stride_c_block, stride_c_slot, stride_c_head,
    block_size,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    KV_HEADS_P: tl.constexpr, HEAD_DIM_P: tl.constexpr,
):
    """One program per token: copies all its KV heads (last dims contiguous)."""
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // block_size
    row = slot % block_size
    heads = tl.arange(0, KV_HEADS_P)
    dims = tl.arange(0, HEAD_DIM_P)
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)
    k = tl.load(key_ptr + token * stride_k_tok + heads[:, None] * stride_k_head + dims[None, :],
                mask=mask)
    v = tl.load(value_ptr + token * stride_v_tok + heads[:, None] * stride_v_head + dims[None, :],
                mask=mask)
    dst = (block * stride_c_block + row * stride_c_slot + heads[:, None] * stride_c_head
           + dims[None, :])
    tl.store(key_cache_ptr + dst, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(value_cache_ptr + dst, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


def _constexprs(num_kv_heads: int, head_dim: int) -> dict:
    return {"NUM_KV_HEADS": num_kv_heads, "HEAD_DIM": head_dim,
            "KV_HEADS_P": next_power_of_2(num_kv_heads), "HEAD_DIM_P": next_power_of_2(head_dim)}


def _num_warps(num_kv_heads: int, head_dim: int, tuning: KernelTuning) -> int:
    return tuning.warps(128 if num_kv_heads * head_dim >= 1024 else 32)


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor, *,
                      tuning: KernelTuning = DEFAULT_TUNING) -> None:
    """key, value: [T, KVH, D]; key_cache, value_cache: [num_blocks, block_size, KVH, D] with
    the same strides; slot_mapping: [T] int32/int64. Writes in place."""
    check_float("key", key)
    num_tokens, num_kv_heads, head_dim = key.shape
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if key_cache.shape[2:] != (num_kv_heads, head_dim) or key_cache.shape != value_cache.shape:
        raise ValueError(f"cache shape {tuple(key_cache.shape)} does not hold "
                         f"{num_kv_heads} kv heads of size {head_dim}")
    if key_cache.stride() != value_cache.stride():
        raise ValueError("key_cache and value_cache must have the same strides")
    if key.stride(-1) != 1 or value.stride(-1) != 1 or key_cache.stride(-1) != 1:
        raise ValueError("the head dimension of key, value and the cache must be contiguous")
    if num_tokens == 0:
        return
    reshape_and_cache_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        key_cache.shape[1],
        num_warps=_num_warps(num_kv_heads, head_dim, tuning),
        **_constexprs(num_kv_heads, head_dim),
    )


def aot_specs(dtype: torch.dtype, tuning: KernelTuning = DEFAULT_TUNING) -> list[AotSpec]:
    specs = []
    for kvh, d in ((8, 128), (2, 64)):
        types = {n: "i32" for n in reshape_and_cache_kernel.arg_names}
        types.update(key_ptr=ptr(dtype), value_ptr=ptr(dtype), key_cache_ptr=ptr(dtype),
                     value_cache_ptr=ptr(dtype), slot_mapping_ptr="*i64")
        specs.append(AotSpec(reshape_and_cache_kernel, types, _constexprs(kvh, d),
                             num_warps=_num_warps(kvh, d, tuning), label=f"kvh{kvh}-d{d}"))
    return specs
