"""Depthwise causal conv1d over the engine's conv-state slots (see
``llmserve_ssm.ops.causal_conv1d`` for the semantics and ``llmserve_ssm.ops.slots`` for the
slot convention).

Prefill: one program per (token block of one sequence, channel block). Token blocks of
``BLOCK_T`` tokens are numbered in one flat range, sequence ``s``'s from
``cu_seqlens[s] // BLOCK_T + s`` (``num_tokens // BLOCK_T + num_seqs`` programs, host integers
only); a program finds its sequence by binary search and exits when its block is past the
sequence's end. Each output is a sum over the ``K`` taps, each tap a [BLOCK_T, BLOCK_D] load
of x or, for positions before the sequence start, of the sequence's conv-state row (only
where ``has_initial_state``; zeros otherwise). ``BLOCK_T >= K - 1``, so only a sequence's
first token block reads its state, and that program also writes the new state: the last
``K - 1`` inputs, counting the old history, so a sequence shorter than ``K - 1`` keeps part
of it. It reads everything it needs first, then a barrier, then writes.

Decode: one program per (sequence, channel block): the window is the state rows plus the
new input; the state is shifted by one and appended in place (read, barrier, write).

fp32 accumulation; ``y`` in x's dtype; the state keeps its own dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_ssm.kernels.common import (
    AotSpec,
    _find_seq,
    _silu,
    bool_tensor,
    check_float,
    check_state,
    check_vector,
    index_tensor,
    int_types,
    next_power_of_2,
    num_flat_blocks,
    ptr,
    rows_contiguous,
    silu_flag,
    unique_specs,
)
from llmserve_ssm.ops._varlen import check_ndim

#: Widest conv the kernels are built for (Mamba uses 4).
MAX_KERNEL_SIZE = 16
#: Tokens per prefill program (at least ``MAX_KERNEL_SIZE - 1``).
BLOCK_T = 32


@triton.jit
def conv1d_prefill_kernel(
    x_ptr, weight_ptr, bias_ptr, state_ptr, state_indices_ptr, cu_seqlens_ptr,
    has_initial_state_ptr, y_ptr,
    num_seqs, dim,
    stride_x_tok, stride_w_dim, stride_w_k, stride_s_slot, stride_s_row, stride_y_tok,
    KERNEL_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    block_idx = tl.program_id(0)
    seq = _find_seq(cu_seqlens_ptr, block_idx, num_seqs, BLOCK_T)
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    seq_len = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32) - start
    t0 = (block_idx - (start // BLOCK_T + seq)) * BLOCK_T
    if t0 >= seq_len:
        return
    slot = tl.load(state_indices_ptr + seq).to(tl.int64)
    # Positions -history..-1 come from the state: K - 1 of them with one, none without.
    # (An integer bound rather than a scalar bool in the masks: the interpreter mistypes
    # ``block_mask & scalar_bool``.)
    history = tl.load(has_initial_state_ptr + seq).to(tl.int32) * (KERNEL_SIZE - 1)
    state_row = state_ptr + slot * stride_s_slot

    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    t = t0 + tl.arange(0, BLOCK_T)
    t_ok = t < seq_len

    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(KERNEL_SIZE):
        pos = t - (KERNEL_SIZE - 1) + k  # input position within the sequence
        from_x = (t_ok & (pos >= 0))[:, None] & d_ok[None, :]
        xv = tl.load(x_ptr + (start + pos).to(tl.int64)[:, None] * stride_x_tok + d[None, :],
                     mask=from_x, other=0.0).to(tl.float32)
        from_state = (t_ok & (pos < 0) & (pos >= -history))[:, None] & d_ok[None, :]
        sv = tl.load(state_row + (pos + KERNEL_SIZE - 1)[:, None] * stride_s_row + d[None, :],
                     mask=from_state, other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + d * stride_w_dim + k * stride_w_k, mask=d_ok,
                    other=0.0).to(tl.float32)
        acc += (xv + sv) * w[None, :]
    if SILU:
        acc = _silu(acc)
    tl.store(y_ptr + (start + t).to(tl.int64)[:, None] * stride_y_tok + d[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])

    if t0 == 0:
        # New state row r holds input position seq_len - (K - 1) + r: from x, or (short
        # sequence) from old state row seq_len + r.
        r = tl.arange(0, BLOCK_R)
        r_ok = r < KERNEL_SIZE - 1
        r_pos = seq_len - (KERNEL_SIZE - 1) + r
        r_from_x = (r_ok & (r_pos >= 0))[:, None] & d_ok[None, :]
        r_x = tl.load(x_ptr + (start + r_pos).to(tl.int64)[:, None] * stride_x_tok + d[None, :],
                      mask=r_from_x, other=0.0).to(tl.float32)
        r_from_state = (r_ok & (r_pos < 0) & (r_pos >= -history))[:, None] & d_ok[None, :]
        r_state = tl.load(state_row + (seq_len + r)[:, None] * stride_s_row + d[None, :],
                          mask=r_from_state, other=0.0).to(tl.float32)
        new_state = (r_x + r_state).to(state_ptr.dtype.element_ty)
        tl.debug_barrier()  # every read of the old state is done before any write
        tl.store(state_row + r[:, None] * stride_s_row + d[None, :], new_state,
                 mask=r_ok[:, None] & d_ok[None, :])


@triton.jit
def conv1d_decode_kernel(
    x_ptr, weight_ptr, bias_ptr, state_ptr, state_indices_ptr, y_ptr,
    dim,
    stride_x_seq, stride_w_dim, stride_w_k, stride_s_slot, stride_s_row, stride_y_seq,
    KERNEL_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    slot = tl.load(state_indices_ptr + seq).to(tl.int64)
    state_row = state_ptr + slot * stride_s_slot
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    k = tl.arange(0, BLOCK_K)

    xv = tl.load(x_ptr + seq * stride_x_seq + d, mask=d_ok, other=0.0).to(tl.float32)
    # window[k] = input k of the K the output sees: state rows 0..K-2, then x.
    in_state = (k < KERNEL_SIZE - 1)[:, None] & d_ok[None, :]
    window = tl.load(state_row + k[:, None] * stride_s_row + d[None, :], mask=in_state,
                     other=0.0).to(tl.float32)
    window = tl.where((k == KERNEL_SIZE - 1)[:, None], xv[None, :], window)
    # shifted[r] = window[r + 1]: the new state row r.
    in_state = (k < KERNEL_SIZE - 2)[:, None] & d_ok[None, :]
    shifted = tl.load(state_row + (k + 1)[:, None] * stride_s_row + d[None, :], mask=in_state,
                      other=0.0).to(tl.float32)
    shifted = tl.where((k == KERNEL_SIZE - 2)[:, None], xv[None, :], shifted)

    w = tl.load(weight_ptr + d[None, :] * stride_w_dim + k[:, None] * stride_w_k,
                mask=(k < KERNEL_SIZE)[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    y = tl.sum(window * w, axis=0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if SILU:
        y = _silu(y)
    tl.store(y_ptr + seq * stride_y_seq + d, y.to(y_ptr.dtype.element_ty), mask=d_ok)

    new_state = shifted.to(state_ptr.dtype.element_ty)
    tl.debug_barrier()  # every read of the old state is done before any write
    tl.store(state_row + k[:, None] * stride_s_row + d[None, :], new_state,
             mask=(k < KERNEL_SIZE - 1)[:, None] & d_ok[None, :])


# --------------------------------------------------------------------------------------------
# Launch configuration (shared by the wrappers and ``aot_specs``).


def _prefill_block_d(dim: int) -> int:
    return min(64, max(16, next_power_of_2(dim)))


def _decode_block_d(dim: int) -> int:
    return min(256, max(32, next_power_of_2(dim)))


def _prefill_constexprs(kernel_size: int, dim: int, has_bias: bool, silu: bool) -> dict:
    return {"KERNEL_SIZE": kernel_size, "HAS_BIAS": has_bias, "SILU": silu,
            "BLOCK_T": BLOCK_T, "BLOCK_D": _prefill_block_d(dim),
            "BLOCK_R": next_power_of_2(kernel_size - 1)}


def _decode_constexprs(kernel_size: int, dim: int, has_bias: bool, silu: bool) -> dict:
    return {"KERNEL_SIZE": kernel_size, "HAS_BIAS": has_bias, "SILU": silu,
            "BLOCK_D": _decode_block_d(dim), "BLOCK_K": next_power_of_2(kernel_size)}


PREFILL_NUM_WARPS = 4
DECODE_NUM_WARPS = 4


def _check_weights(weight: torch.Tensor, bias: torch.Tensor | None, dim: int) -> int:
    check_float("weight", weight)
    check_ndim("weight", weight, 2)
    if weight.shape[0] != dim:
        raise ValueError(
            f"weight must have shape (dim={dim}, kernel_size), got {tuple(weight.shape)}")
    kernel_size = weight.shape[1]
    if not 2 <= kernel_size <= MAX_KERNEL_SIZE:
        raise ValueError(f"weight's kernel_size must be in 2..{MAX_KERNEL_SIZE}, "
                         f"got {kernel_size}")
    check_vector("bias", bias, dim)
    return kernel_size


# --------------------------------------------------------------------------------------------
# Wrappers: the signatures of ``llmserve_ssm.ops.slots``.


def conv1d_prefill(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   conv_state: torch.Tensor, state_indices: torch.Tensor,
                   cu_seqlens: torch.Tensor, has_initial_state: torch.Tensor,
                   activation: str | None = "silu") -> torch.Tensor:
    """Causal conv over a packed batch; ``conv_state`` (num_slots, K-1, dim), rows
    ``state_indices`` read (where ``has_initial_state``) and rewritten in place.

    ``cu_seqlens`` is never read on the host: it must be valid (starts at 0, strictly
    increasing, ends at num_tokens), and ``state_indices`` in range and distinct.
    """
    check_float("x", x)
    check_ndim("x", x, 2)
    num_tokens, dim = x.shape
    kernel_size = _check_weights(weight, bias, dim)
    silu = silu_flag(activation)
    check_ndim("cu_seqlens", cu_seqlens, 1)
    num_seqs = cu_seqlens.shape[0] - 1
    if num_seqs < 1:
        raise ValueError("cu_seqlens must hold at least one sequence (num_seqs + 1 >= 2 entries)")
    cu_seqlens = index_tensor("cu_seqlens", cu_seqlens, num_seqs + 1)
    state_indices = index_tensor("state_indices", state_indices, num_seqs)
    # None: no sequence has one, as the reference reads it.
    has_initial_state = bool_tensor("has_initial_state", has_initial_state, num_seqs,
                                    x.device)
    check_state("conv_state", conv_state, (kernel_size - 1, dim))

    x = rows_contiguous(x)
    y = torch.empty(num_tokens, dim, dtype=x.dtype, device=x.device)
    if num_tokens == 0 or dim == 0:
        return y
    constexprs = _prefill_constexprs(kernel_size, dim, bias is not None, silu)
    grid = (num_flat_blocks(num_tokens, num_seqs, BLOCK_T),
            triton.cdiv(dim, constexprs["BLOCK_D"]))
    conv1d_prefill_kernel[grid](
        x, weight, bias if bias is not None else weight, conv_state, state_indices, cu_seqlens,
        has_initial_state, y,
        num_seqs, dim,
        x.stride(0), weight.stride(0), weight.stride(1), conv_state.stride(0),
        conv_state.stride(1), y.stride(0),
        num_warps=PREFILL_NUM_WARPS, **constexprs,
    )
    return y


def conv1d_decode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  conv_state: torch.Tensor, state_indices: torch.Tensor,
                  activation: str | None = "silu") -> torch.Tensor:
    """One token per sequence through the conv; ``x`` (num_seqs, dim). No host sync."""
    check_float("x", x)
    check_ndim("x", x, 2)
    num_seqs, dim = x.shape
    kernel_size = _check_weights(weight, bias, dim)
    silu = silu_flag(activation)
    state_indices = index_tensor("state_indices", state_indices, num_seqs)
    check_state("conv_state", conv_state, (kernel_size - 1, dim))

    x = rows_contiguous(x)
    y = torch.empty(num_seqs, dim, dtype=x.dtype, device=x.device)
    if num_seqs == 0 or dim == 0:
        return y
    constexprs = _decode_constexprs(kernel_size, dim, bias is not None, silu)
    grid = (num_seqs, triton.cdiv(dim, constexprs["BLOCK_D"]))
    conv1d_decode_kernel[grid](
        x, weight, bias if bias is not None else weight, conv_state, state_indices, y,
        dim,
        x.stride(0), weight.stride(0), weight.stride(1), conv_state.stride(0),
        conv_state.stride(1), y.stride(0),
        num_warps=DECODE_NUM_WARPS, **constexprs,
    )
    return y


# --------------------------------------------------------------------------------------------
# Ahead-of-time configurations.

#: (dim, kernel_size, has_bias, silu): the conv of Mamba-2.8B (d_inner 5120) and of
#: Mamba2-2.7B (5120 + 2 * 128 for B and C, the same blocks), a no-bias / no-activation
#: variant, and a small, wide one (narrower channel blocks, K = 8). Only the block sizes
#: depend on dim.
AOT_SHAPES = ((5376, 4, True, True), (1536, 4, False, False), (48, 8, True, True))


def aot_specs(dtype: torch.dtype) -> list[AotSpec]:
    """Prefill and decode for each of ``AOT_SHAPES`` with x, weight and state in ``dtype``
    and int32 indices, plus fp32 states and int64 indices for the first shape."""
    specs = []
    variants = [(dtype, torch.int32)]
    if dtype != torch.float32:
        variants.append((torch.float32, torch.int64))
    for state_dtype, index_dtype in variants:
        for n, (dim, kernel_size, has_bias, silu) in enumerate(AOT_SHAPES):
            if state_dtype != dtype and n > 0:
                continue
            label = (f"dim{dim}-k{kernel_size}-bias{int(has_bias)}-silu{int(silu)}"
                     f"-state_{str(state_dtype)[6:]}-idx_{str(index_dtype)[6:]}")
            types = int_types(conv1d_prefill_kernel)
            types.update(x_ptr=ptr(dtype), weight_ptr=ptr(dtype), bias_ptr=ptr(dtype),
                         state_ptr=ptr(state_dtype), state_indices_ptr=ptr(index_dtype),
                         cu_seqlens_ptr=ptr(index_dtype), has_initial_state_ptr="*i1",
                         y_ptr=ptr(dtype))
            specs.append(AotSpec(conv1d_prefill_kernel, types,
                                 _prefill_constexprs(kernel_size, dim, has_bias, silu),
                                 num_warps=PREFILL_NUM_WARPS, label=f"prefill-{label}"))
            types = int_types(conv1d_decode_kernel)
            types.update(x_ptr=ptr(dtype), weight_ptr=ptr(dtype), bias_ptr=ptr(dtype),
                         state_ptr=ptr(state_dtype), state_indices_ptr=ptr(index_dtype),
                         y_ptr=ptr(dtype))
            specs.append(AotSpec(conv1d_decode_kernel, types,
                                 _decode_constexprs(kernel_size, dim, has_bias, silu),
                                 num_warps=DECODE_NUM_WARPS, label=f"decode-{label}"))
    return unique_specs(specs)
