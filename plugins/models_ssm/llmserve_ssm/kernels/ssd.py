"""Mamba2's SSD over the engine's SSM-state slots: the chunked scan for prefill and the
one-step update for decode (see ``llmserve_ssm.ops.ssd`` for the semantics and
``llmserve_ssm.ops.slots`` for the slot convention).

Prefill is the real chunked SSD (Mamba2 paper, section 6), in four launches and with no
host synchronisation. Each sequence is cut into chunks of ``chunk_size`` tokens from its own
first token (chunks never cross sequences); chunks of all sequences are numbered in one
flat range, sequence ``s``'s from ``cu_seqlens[s] // chunk_size + s``, so
``num_tokens // chunk_size + num_seqs`` bounds them with host integers (every program finds
its sequence by binary search and exits when its chunk is past the sequence's end); the
fp32 work buffers below are sized by that bound.

1. ``ssd_chunk_cumsum_kernel`` (chunk, head block): the step size
   ``dt = clamp(softplus(dt + dt_bias), dt_min, dt_max)`` and the within-chunk cumulative
   log decay ``cs[l] = sum_{k <= l} dt[k] A[h]``.
2. ``ssd_chunk_state_kernel`` (chunk, P x N block, head): each chunk's own contribution to
   the state at its end, ``sum_l exp(cs[end] - cs[l]) dt[l] x[l] B[l]^T``, one ``tl.dot``
   per block of ``BLOCK_L`` positions.
3. ``ssd_state_passing_kernel`` (sequence, head, state block): walks the sequence's chunks
   in order from its starting state (the slot's, where ``has_initial_state``, else zeros),
   ``S <- exp(cs[end]) S + chunk_state``, leaves each chunk's *starting* state in the buffer
   and writes the final state to the slot in the slot tensor's dtype.
4. ``ssd_chunk_scan_kernel`` (chunk, L x P block, head): the output, the masked quadratic
   form inside the chunk, ``y[l] = sum_{s <= l} (C[l] . B[s]) exp(cs[l] - cs[s]) dt[s] x[s]``
   (``tl.dot`` for ``C B^T`` and for its product with x), plus the starting state's part
   ``exp(cs[l]) C[l] S``, then ``D x`` and the ``silu(z)`` gate.

The decays within a chunk are differences of the chunk's cumulative sums (restarted every
chunk, so they stay as small as a chunk's total decay), as the mamba_ssm kernels do.

Precision: fp32 inputs use fp32 dots (``input_precision="ieee"``, no TF32). fp16/bf16 inputs
feed the tensor cores in the input dtype with fp32 accumulation, as the mamba_ssm kernels
do: the decay-weighted scores, the chunk's starting state and ``dt x`` are rounded to the
input dtype for their products. Under the Triton interpreter, whose ``tl.dot`` multiplies
bf16 operands as their raw 16-bit integers (Triton 3.x), bf16 inputs take the fp32 dots.

Decode: one program per (sequence, head, block of ``BLOCK_P`` of the head's rows) over the
(BLOCK_P, d_state) state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_ssm.kernels.common import (
    AotSpec,
    _dot,
    _find_seq,
    _silu,
    _softplus,
    bool_tensor,
    check_float,
    check_state,
    index_tensor,
    int_types,
    interpreting,
    next_power_of_2,
    num_flat_blocks,
    ptr,
    rows_contiguous,
    unique_specs,
)
from llmserve_ssm.ops._varlen import check_ndim, check_shape
from llmserve_ssm.ops.ssd import NO_DT_LIMIT

#: Largest chunk the kernels take (Mamba2 checkpoints use 256).
MAX_CHUNK_SIZE = 2048
#: Largest d_state a program holds whole (Mamba2 checkpoints use 64 to 256).
MAX_D_STATE = 256


@triton.jit
def ssd_chunk_cumsum_kernel(
    dt_ptr, A_ptr, dt_bias_ptr, cu_seqlens_ptr, dt_out_ptr, cs_out_ptr,
    num_seqs, num_heads, chunk_size, dt_min, dt_max,
    stride_dt_tok, stride_buf_chunk, stride_buf_head,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
):
    chunk = tl.program_id(0)
    seq = _find_seq(cu_seqlens_ptr, chunk, num_seqs, chunk_size)
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    seq_len = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32) - start
    chunk_start = (chunk - (start // chunk_size + seq)) * chunk_size
    if chunk_start >= seq_len:
        return
    chunk_len = tl.minimum(chunk_size, seq_len - chunk_start)

    l = tl.arange(0, BLOCK_L)
    l_ok = l < chunk_len
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < num_heads
    ok = l_ok[:, None] & h_ok[None, :]
    tok = (start + chunk_start + l).to(tl.int64)
    dt = tl.load(dt_ptr + tok[:, None] * stride_dt_tok + h[None, :], mask=ok,
                 other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    if DT_SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(ok, dt, 0.0)  # padding positions: no decay, no input
    A = tl.load(A_ptr + h, mask=h_ok, other=0.0).to(tl.float32)
    cs = tl.cumsum(dt * A[None, :], axis=0)
    off = chunk.to(tl.int64) * stride_buf_chunk + h[None, :] * stride_buf_head + l[:, None]
    tl.store(dt_out_ptr + off, dt, mask=ok)
    tl.store(cs_out_ptr + off, cs, mask=ok)


@triton.jit
def ssd_chunk_state_kernel(
    x_ptr, B_ptr, dt_buf_ptr, cs_buf_ptr, cu_seqlens_ptr, states_ptr,
    num_seqs, chunk_size, head_dim, d_state, heads_per_group,
    stride_x_tok, stride_x_head, stride_B_tok, stride_B_group,
    stride_buf_chunk, stride_buf_head, stride_st_chunk, stride_st_head, stride_st_p,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_IEEE: tl.constexpr,
):
    chunk = tl.program_id(0)
    seq = _find_seq(cu_seqlens_ptr, chunk, num_seqs, chunk_size)
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    seq_len = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32) - start
    chunk_start = (chunk - (start // chunk_size + seq)) * chunk_size
    if chunk_start >= seq_len:
        return
    chunk_len = tl.minimum(chunk_size, seq_len - chunk_start)
    h = tl.program_id(2)
    g = h // heads_per_group
    num_p_blocks = tl.cdiv(head_dim, BLOCK_P)
    p = (tl.program_id(1) % num_p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = (tl.program_id(1) // num_p_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    p_ok = p < head_dim
    n_ok = n < d_state

    buf = chunk.to(tl.int64) * stride_buf_chunk + h * stride_buf_head
    cs_end = tl.load(cs_buf_ptr + buf + chunk_len - 1)
    x_base = x_ptr + h * stride_x_head
    B_base = B_ptr + g * stride_B_group
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for l0 in range(0, chunk_len, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        l_ok = l < chunk_len
        cs = tl.load(cs_buf_ptr + buf + l, mask=l_ok, other=0.0)
        dt = tl.load(dt_buf_ptr + buf + l, mask=l_ok, other=0.0)
        w = tl.where(l_ok, dt * tl.exp(cs_end - cs), 0.0)  # decay to the chunk's end
        tok = (start + chunk_start + l).to(tl.int64)
        xT = tl.load(x_base + tok[None, :] * stride_x_tok + p[:, None],
                     mask=p_ok[:, None] & l_ok[None, :], other=0.0).to(tl.float32)
        xT = (xT * w[None, :]).to(x_ptr.dtype.element_ty)
        Bl = tl.load(B_base + tok[:, None] * stride_B_tok + n[None, :],
                     mask=l_ok[:, None] & n_ok[None, :], other=0.0).to(x_ptr.dtype.element_ty)
        acc += _dot(xT, Bl, DOT_IEEE)
    off = chunk.to(tl.int64) * stride_st_chunk + h * stride_st_head
    tl.store(states_ptr + off + p[:, None] * stride_st_p + n[None, :], acc,
             mask=p_ok[:, None] & n_ok[None, :])


@triton.jit
def ssd_state_passing_kernel(
    states_ptr, cs_buf_ptr, ssm_state_ptr, state_indices_ptr, cu_seqlens_ptr,
    has_initial_state_ptr,
    chunk_size, d_state, state_size,
    stride_buf_chunk, stride_buf_head, stride_st_chunk, stride_st_head,
    stride_s_slot, stride_s_head, stride_s_p,
    BLOCK: tl.constexpr,
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    e = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)  # flat (p, n) of the buffer's rows
    e_ok = e < state_size
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    seq_len = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32) - start
    slot = tl.load(state_indices_ptr + seq).to(tl.int64)
    # Elements to read: all with an initial state, none without (an integer bound rather
    # than a scalar bool in the mask: the interpreter mistypes ``mask & scalar_bool``).
    n_read = tl.load(has_initial_state_ptr + seq).to(tl.int32) * state_size
    slot_off = (slot * stride_s_slot + h * stride_s_head + (e // d_state) * stride_s_p
                + e % d_state)
    s = tl.load(ssm_state_ptr + slot_off, mask=e < n_read, other=0.0).to(tl.float32)

    first_chunk = start // chunk_size + seq
    for j in range(tl.cdiv(seq_len, chunk_size)):
        chunk = (first_chunk + j).to(tl.int64)
        chunk_len = tl.minimum(chunk_size, seq_len - j * chunk_size)
        cs_end = tl.load(cs_buf_ptr + chunk * stride_buf_chunk + h * stride_buf_head
                         + chunk_len - 1)
        off = chunk * stride_st_chunk + h * stride_st_head + e
        own = tl.load(states_ptr + off, mask=e_ok, other=0.0)
        tl.store(states_ptr + off, s, mask=e_ok)  # the chunk's starting state, for step 4
        s = tl.exp(cs_end) * s + own
    tl.store(ssm_state_ptr + slot_off, s.to(ssm_state_ptr.dtype.element_ty), mask=e_ok)


@triton.jit
def ssd_chunk_scan_kernel(
    y_ptr, x_ptr, z_ptr, B_ptr, C_ptr, D_ptr, dt_buf_ptr, cs_buf_ptr, states_ptr,
    cu_seqlens_ptr,
    num_seqs, chunk_size, head_dim, d_state, heads_per_group,
    stride_x_tok, stride_x_head, stride_z_tok, stride_z_head, stride_y_tok, stride_y_head,
    stride_B_tok, stride_B_group, stride_C_tok, stride_C_group, stride_D_head, stride_D_p,
    stride_buf_chunk, stride_buf_head, stride_st_chunk, stride_st_head, stride_st_p,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_IEEE: tl.constexpr,
):
    chunk = tl.program_id(0)
    seq = _find_seq(cu_seqlens_ptr, chunk, num_seqs, chunk_size)
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    seq_len = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32) - start
    chunk_start = (chunk - (start // chunk_size + seq)) * chunk_size
    if chunk_start >= seq_len:
        return
    chunk_len = tl.minimum(chunk_size, seq_len - chunk_start)
    num_p_blocks = tl.cdiv(head_dim, BLOCK_P)
    l0 = (tl.program_id(1) // num_p_blocks) * BLOCK_L
    if l0 >= chunk_len:
        return
    h = tl.program_id(2)
    g = h // heads_per_group
    p = (tl.program_id(1) % num_p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < head_dim
    n = tl.arange(0, BLOCK_N)
    n_ok = n < d_state
    dot_ty = x_ptr.dtype.element_ty

    l = l0 + tl.arange(0, BLOCK_L)
    l_ok = l < chunk_len
    tok_l = (start + chunk_start + l).to(tl.int64)
    buf = chunk.to(tl.int64) * stride_buf_chunk + h * stride_buf_head
    cs_l = tl.load(cs_buf_ptr + buf + l, mask=l_ok, other=0.0)
    C_l = tl.load(C_ptr + g * stride_C_group + tok_l[:, None] * stride_C_tok + n[None, :],
                  mask=l_ok[:, None] & n_ok[None, :], other=0.0).to(dot_ty)

    # The chunk's starting state, decayed to each position: exp(cs[l]) C[l] S^T.
    st = chunk.to(tl.int64) * stride_st_chunk + h * stride_st_head
    S = tl.load(states_ptr + st + p[None, :] * stride_st_p + n[:, None],
                mask=n_ok[:, None] & p_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
    acc = _dot(C_l, S.to(dot_ty), DOT_IEEE) * tl.exp(cs_l)[:, None]

    # Within the chunk: the causal, decay-weighted C B^T times dt x.
    x_head = x_ptr + h * stride_x_head
    B_group = B_ptr + g * stride_B_group
    for s0 in range(0, tl.minimum(l0 + BLOCK_L, chunk_len), BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < chunk_len
        tok_s = (start + chunk_start + s).to(tl.int64)
        BT = tl.load(B_group + tok_s[None, :] * stride_B_tok + n[:, None],
                     mask=n_ok[:, None] & s_ok[None, :], other=0.0).to(dot_ty)
        scores = _dot(C_l, BT, DOT_IEEE)  # [BLOCK_L, BLOCK_S]
        cs_s = tl.load(cs_buf_ptr + buf + s, mask=s_ok, other=0.0)
        dt_s = tl.load(dt_buf_ptr + buf + s, mask=s_ok, other=0.0)
        causal = (l[:, None] >= s[None, :]) & s_ok[None, :]
        decay = tl.exp(tl.where(causal, cs_l[:, None] - cs_s[None, :], float("-inf")))
        scores = scores * decay * dt_s[None, :]
        x_s = tl.load(x_head + tok_s[:, None] * stride_x_tok + p[None, :],
                      mask=s_ok[:, None] & p_ok[None, :], other=0.0)
        acc += _dot(scores.to(dot_ty), x_s.to(dot_ty), DOT_IEEE)

    lp_ok = l_ok[:, None] & p_ok[None, :]
    if HAS_D:
        x_l = tl.load(x_head + tok_l[:, None] * stride_x_tok + p[None, :], mask=lp_ok,
                      other=0.0).to(tl.float32)
        D = tl.load(D_ptr + h * stride_D_head + p * stride_D_p, mask=p_ok,
                    other=0.0).to(tl.float32)
        acc += x_l * D[None, :]
    if HAS_Z:
        z = tl.load(z_ptr + tok_l[:, None] * stride_z_tok + h * stride_z_head + p[None, :],
                    mask=lp_ok, other=0.0).to(tl.float32)
        acc *= _silu(z)
    tl.store(y_ptr + tok_l[:, None] * stride_y_tok + h * stride_y_head + p[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=lp_ok)


@triton.jit
def ssd_decode_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, state_ptr,
    state_indices_ptr, y_ptr,
    head_dim, d_state, heads_per_group, dt_min, dt_max,
    stride_x_seq, stride_x_head, stride_dt_seq, stride_B_seq, stride_B_group,
    stride_C_seq, stride_C_group, stride_D_head, stride_D_p, stride_z_seq, stride_z_head,
    stride_s_slot, stride_s_head, stride_s_p, stride_y_seq, stride_y_head,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = h // heads_per_group
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < head_dim
    n = tl.arange(0, BLOCK_N)
    n_ok = n < d_state
    pn_ok = p_ok[:, None] & n_ok[None, :]
    slot = tl.load(state_indices_ptr + seq).to(tl.int64)
    state_off = slot * stride_s_slot + h * stride_s_head + p[:, None] * stride_s_p + n[None, :]

    S = tl.load(state_ptr + state_off, mask=pn_ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + seq * stride_x_seq + h * stride_x_head + p, mask=p_ok,
                other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + seq * stride_dt_seq + h).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + h).to(tl.float32)
    if DT_SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    A = tl.load(A_ptr + h).to(tl.float32)
    B = tl.load(B_ptr + seq * stride_B_seq + g * stride_B_group + n, mask=n_ok,
                other=0.0).to(tl.float32)
    C = tl.load(C_ptr + seq * stride_C_seq + g * stride_C_group + n, mask=n_ok,
                other=0.0).to(tl.float32)
    S = tl.exp(dt * A) * S + (dt * x)[:, None] * B[None, :]
    y = tl.sum(S * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + h * stride_D_head + p * stride_D_p, mask=p_ok,
                     other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + seq * stride_z_seq + h * stride_z_head + p, mask=p_ok,
                    other=0.0).to(tl.float32)
        y *= _silu(z)
    tl.store(y_ptr + seq * stride_y_seq + h * stride_y_head + p,
             y.to(y_ptr.dtype.element_ty), mask=p_ok)
    tl.store(state_ptr + state_off, S.to(state_ptr.dtype.element_ty), mask=pn_ok)


# --------------------------------------------------------------------------------------------
# Launch configuration (shared by the wrappers and ``aot_specs``).

CHUNK_NUM_WARPS = 4
STATE_PASSING_NUM_WARPS = 4
DECODE_NUM_WARPS = 4


def _pad16(n: int) -> int:
    """``tl.dot`` operands are at least 16 wide on NVIDIA."""
    return max(16, next_power_of_2(n))


def _cumsum_constexprs(chunk_size: int, num_heads: int, has_bias: bool, softplus: bool
                       ) -> dict:
    block_l = next_power_of_2(chunk_size)
    block_h = max(1, min(next_power_of_2(num_heads), 4096 // block_l))
    return {"HAS_DT_BIAS": has_bias, "DT_SOFTPLUS": softplus, "BLOCK_L": block_l,
            "BLOCK_H": block_h}


def _dot_ieee(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def _chunk_state_constexprs(head_dim: int, d_state: int, dtype: torch.dtype,
                            dot_ieee: bool | None = None) -> dict:
    return {"BLOCK_L": 32, "BLOCK_P": min(64, _pad16(head_dim)),
            "BLOCK_N": min(64, _pad16(d_state)),
            "DOT_IEEE": _dot_ieee(dtype) if dot_ieee is None else dot_ieee}


def _chunk_scan_constexprs(chunk_size: int, head_dim: int, d_state: int, has_d: bool,
                           has_z: bool, dtype: torch.dtype, dot_ieee: bool | None = None
                           ) -> dict:
    block_n = _pad16(d_state)
    block_l = min(64 if block_n <= 128 else 32, _pad16(chunk_size))
    return {"HAS_D": has_d, "HAS_Z": has_z, "BLOCK_L": block_l,
            "BLOCK_S": min(32, block_l), "BLOCK_P": min(64, _pad16(head_dim)),
            "BLOCK_N": block_n, "DOT_IEEE": _dot_ieee(dtype) if dot_ieee is None else dot_ieee}


def _state_passing_constexprs(head_dim: int, d_state: int) -> dict:
    return {"BLOCK": min(2048, next_power_of_2(head_dim * d_state))}


def _decode_constexprs(head_dim: int, d_state: int, has_d: bool, has_z: bool,
                       has_bias: bool, softplus: bool) -> dict:
    block_n = next_power_of_2(d_state)
    return {"HAS_D": has_d, "HAS_Z": has_z, "HAS_DT_BIAS": has_bias, "DT_SOFTPLUS": softplus,
            "BLOCK_P": max(1, min(next_power_of_2(head_dim), 4096 // block_n)),
            "BLOCK_N": block_n}


def _check_heads(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                 dt_bias: torch.Tensor | None) -> tuple[int, int, int, int, int]:
    """The reference's shape rules; returns (rows, num_heads, head_dim, n_groups, d_state)."""
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_float(name, t)
    check_ndim("x", x, 3)
    rows, num_heads, head_dim = x.shape
    check_shape("dt", dt, (rows, num_heads))
    check_shape("A", A, (num_heads,))
    check_ndim("B", B, 3)
    if B.shape[0] != rows:
        raise ValueError(f"B must have shape ({rows}, n_groups, d_state), got {tuple(B.shape)}")
    n_groups, d_state = B.shape[1:]
    if n_groups < 1 or num_heads % n_groups != 0:
        raise ValueError(f"B's n_groups ({n_groups}) must divide num_heads ({num_heads})")
    if not 1 <= d_state <= MAX_D_STATE:
        raise ValueError(f"B's d_state must be in 1..{MAX_D_STATE}, got {d_state}")
    check_shape("C", C, (rows, n_groups, d_state))
    if D is not None:
        check_float("D", D)
        if tuple(D.shape) not in ((num_heads,), (num_heads, head_dim)):
            raise ValueError(f"D must have shape ({num_heads},) or ({num_heads}, {head_dim}), "
                             f"got {tuple(D.shape)}")
    if z is not None:
        check_float("z", z)
        check_shape("z", z, (rows, num_heads, head_dim))
    if dt_bias is not None:
        check_float("dt_bias", dt_bias)
        check_shape("dt_bias", dt_bias, (num_heads,))
    return rows, num_heads, head_dim, n_groups, d_state


def _d_strides(D: torch.Tensor | None) -> tuple[int, int]:
    if D is None:
        return 0, 0
    return (D.stride(0), 0) if D.dim() == 1 else (D.stride(0), D.stride(1))


def _dt_limit(dt_limit: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"dt_limit must be a (min, max) pair of floats, got {dt_limit!r}"
                         ) from None
    return lo, hi


# --------------------------------------------------------------------------------------------
# Wrappers: the signatures of ``llmserve_ssm.ops.slots``.


def ssd_prefill(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, chunk_size: int, D: torch.Tensor | None,
                z: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
                ssm_state: torch.Tensor, state_indices: torch.Tensor,
                cu_seqlens: torch.Tensor, has_initial_state: torch.Tensor,
                dt_limit: tuple[float, float] = NO_DT_LIMIT) -> torch.Tensor:
    """Mamba2 chunked SSD over a packed batch; ``ssm_state`` (num_slots, H, P, N).

    ``cu_seqlens`` is never read on the host: it must be valid, and ``state_indices`` in
    range and distinct. Four launches; fp32 work buffers of
    ``(num_tokens // chunk_size + num_seqs) * H * (P * N + 2 * chunk_size)`` elements.
    """
    num_tokens, num_heads, head_dim, n_groups, d_state = _check_heads(x, dt, A, B, C, D, z,
                                                                      dt_bias)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) \
            or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be an int in 1..{MAX_CHUNK_SIZE}, got {chunk_size!r}")
    dt_min, dt_max = _dt_limit(dt_limit)
    check_ndim("cu_seqlens", cu_seqlens, 1)
    num_seqs = cu_seqlens.shape[0] - 1
    if num_seqs < 1:
        raise ValueError("cu_seqlens must hold at least one sequence (num_seqs + 1 >= 2 entries)")
    cu_seqlens = index_tensor("cu_seqlens", cu_seqlens, num_seqs + 1)
    state_indices = index_tensor("state_indices", state_indices, num_seqs)
    # None: every slot is a starting state, as the reference reads it.
    has_initial_state = bool_tensor("has_initial_state", has_initial_state, num_seqs,
                                    x.device, default=True)
    check_state("ssm_state", ssm_state, (num_heads, head_dim, d_state))

    x, dt, A, B, C = (rows_contiguous(t) for t in (x, dt, A, B, C))
    D = rows_contiguous(D) if D is not None else None
    z = rows_contiguous(z) if z is not None else None
    dt_bias = rows_contiguous(dt_bias) if dt_bias is not None else None
    y = torch.empty(num_tokens, num_heads, head_dim, dtype=x.dtype, device=x.device)
    if num_tokens == 0 or num_heads == 0 or head_dim == 0:
        return y
    heads_per_group = num_heads // n_groups
    num_chunks = num_flat_blocks(num_tokens, num_seqs, chunk_size)
    f32 = {"dtype": torch.float32, "device": x.device}
    dt_buf = torch.empty(num_chunks, num_heads, chunk_size, **f32)
    cs_buf = torch.empty(num_chunks, num_heads, chunk_size, **f32)
    states = torch.empty(num_chunks, num_heads, head_dim, d_state, **f32)
    buf_strides = (dt_buf.stride(0), dt_buf.stride(1))
    st_strides = (states.stride(0), states.stride(1), states.stride(2))

    cx = _cumsum_constexprs(chunk_size, num_heads, dt_bias is not None, bool(dt_softplus))
    ssd_chunk_cumsum_kernel[(num_chunks, triton.cdiv(num_heads, cx["BLOCK_H"]))](
        dt, A, dt_bias if dt_bias is not None else A, cu_seqlens, dt_buf, cs_buf,
        num_seqs, num_heads, chunk_size, dt_min, dt_max,
        dt.stride(0), *buf_strides,
        num_warps=CHUNK_NUM_WARPS, **cx,
    )
    cx = _chunk_state_constexprs(head_dim, d_state, x.dtype)
    grid = (num_chunks, triton.cdiv(head_dim, cx["BLOCK_P"]) * triton.cdiv(d_state, cx["BLOCK_N"]),
            num_heads)
    ssd_chunk_state_kernel[grid](
        x, B, dt_buf, cs_buf, cu_seqlens, states,
        num_seqs, chunk_size, head_dim, d_state, heads_per_group,
        x.stride(0), x.stride(1), B.stride(0), B.stride(1), *buf_strides, *st_strides,
        num_warps=CHUNK_NUM_WARPS, **cx,
    )
    cx = _state_passing_constexprs(head_dim, d_state)
    grid = (num_seqs, num_heads, triton.cdiv(head_dim * d_state, cx["BLOCK"]))
    ssd_state_passing_kernel[grid](
        states, cs_buf, ssm_state, state_indices, cu_seqlens, has_initial_state,
        chunk_size, d_state, head_dim * d_state,
        *buf_strides, states.stride(0), states.stride(1),
        ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2),
        num_warps=STATE_PASSING_NUM_WARPS, **cx,
    )
    cx = _chunk_scan_constexprs(chunk_size, head_dim, d_state, D is not None, z is not None,
                                x.dtype)
    grid = (num_chunks, triton.cdiv(chunk_size, cx["BLOCK_L"])
            * triton.cdiv(head_dim, cx["BLOCK_P"]), num_heads)
    z_arg = z if z is not None else x
    ssd_chunk_scan_kernel[grid](
        y, x, z_arg, B, C, D if D is not None else A, dt_buf, cs_buf, states, cu_seqlens,
        num_seqs, chunk_size, head_dim, d_state, heads_per_group,
        x.stride(0), x.stride(1), z_arg.stride(0), z_arg.stride(1), y.stride(0), y.stride(1),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), *_d_strides(D),
        *buf_strides, *st_strides,
        num_warps=CHUNK_NUM_WARPS, **cx,
    )
    return y


def ssd_decode(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
               dt_bias: torch.Tensor | None, dt_softplus: bool, ssm_state: torch.Tensor,
               state_indices: torch.Tensor,
               dt_limit: tuple[float, float] = NO_DT_LIMIT) -> torch.Tensor:
    """One Mamba2 step per sequence; ``x`` (num_seqs, H, P). No host sync."""
    num_seqs, num_heads, head_dim, n_groups, d_state = _check_heads(x, dt, A, B, C, D, z,
                                                                    dt_bias)
    dt_min, dt_max = _dt_limit(dt_limit)
    state_indices = index_tensor("state_indices", state_indices, num_seqs)
    check_state("ssm_state", ssm_state, (num_heads, head_dim, d_state))

    x, dt, A, B, C = (rows_contiguous(t) for t in (x, dt, A, B, C))
    D = rows_contiguous(D) if D is not None else None
    z = rows_contiguous(z) if z is not None else None
    dt_bias = rows_contiguous(dt_bias) if dt_bias is not None else None
    y = torch.empty(num_seqs, num_heads, head_dim, dtype=x.dtype, device=x.device)
    if num_seqs == 0 or num_heads == 0 or head_dim == 0:
        return y
    cx = _decode_constexprs(head_dim, d_state, D is not None, z is not None,
                            dt_bias is not None, bool(dt_softplus))
    z_arg = z if z is not None else x
    grid = (num_seqs, num_heads, triton.cdiv(head_dim, cx["BLOCK_P"]))
    ssd_decode_kernel[grid](
        x, dt, A, B, C, D if D is not None else A, z_arg,
        dt_bias if dt_bias is not None else A, ssm_state, state_indices, y,
        head_dim, d_state, num_heads // n_groups, dt_min, dt_max,
        x.stride(0), x.stride(1), dt.stride(0), B.stride(0), B.stride(1),
        C.stride(0), C.stride(1), *_d_strides(D), z_arg.stride(0), z_arg.stride(1),
        ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2),
        y.stride(0), y.stride(1),
        num_warps=DECODE_NUM_WARPS, **cx,
    )
    return y


# --------------------------------------------------------------------------------------------
# Ahead-of-time configurations.

#: (num_heads, head_dim, d_state, chunk_size): Mamba2-2.7B / Codestral-Mamba-7B /
#: Nemotron-H-8B (P 64, N 128, chunk 256), and a small-state shape (N 64, chunk 128).
AOT_SHAPES = ((80, 64, 128, 256), (32, 64, 64, 128))


def aot_specs(dtype: torch.dtype) -> list[AotSpec]:
    """Every kernel for each of ``AOT_SHAPES``, with x, B, C, z, dt and the parameters in
    ``dtype``, the state in ``dtype``, int32 indices, D per head, z and a softplus'd,
    biased dt; plus, for the first shape, an fp32 state and parameters (A, D, dt_bias) with
    int64 indices and D per (head, p), and a variant without D, z or bias. The low-precision
    dots are the ones GPUs run (``DOT_IEEE`` only for fp32)."""
    specs = []
    variants = [(dtype, dtype, torch.int32, True)]
    if dtype != torch.float32:
        variants.append((torch.float32, torch.float32, torch.int64, True))
    variants.append((dtype, dtype, torch.int32, False))
    dot_ieee = dtype == torch.float32
    for state_dtype, param_dtype, index_dtype, full in variants:
        for shape_n, (num_heads, head_dim, d_state, chunk_size) in enumerate(AOT_SHAPES):
            if (state_dtype != dtype or not full) and shape_n > 0:
                continue
            label = (f"h{num_heads}-p{head_dim}-n{d_state}-chunk{chunk_size}"
                     f"-{'dzbias' if full else 'plain'}-state_{str(state_dtype)[6:]}"
                     f"-param_{str(param_dtype)[6:]}-idx_{str(index_dtype)[6:]}")
            act, par, idx = ptr(dtype), ptr(param_dtype), ptr(index_dtype)

            types = int_types(ssd_chunk_cumsum_kernel)
            types.update(dt_ptr=act, A_ptr=par, dt_bias_ptr=par, cu_seqlens_ptr=idx,
                         dt_out_ptr="*fp32", cs_out_ptr="*fp32", dt_min="fp32", dt_max="fp32")
            specs.append(AotSpec(ssd_chunk_cumsum_kernel, types,
                                 _cumsum_constexprs(chunk_size, num_heads, full, full),
                                 num_warps=CHUNK_NUM_WARPS, label=f"cumsum-{label}"))

            types = int_types(ssd_chunk_state_kernel)
            types.update(x_ptr=act, B_ptr=act, dt_buf_ptr="*fp32", cs_buf_ptr="*fp32",
                         cu_seqlens_ptr=idx, states_ptr="*fp32")
            specs.append(AotSpec(ssd_chunk_state_kernel, types,
                                 _chunk_state_constexprs(head_dim, d_state, dtype, dot_ieee),
                                 num_warps=CHUNK_NUM_WARPS, label=f"chunk_state-{label}"))

            types = int_types(ssd_state_passing_kernel)
            types.update(states_ptr="*fp32", cs_buf_ptr="*fp32", ssm_state_ptr=ptr(state_dtype),
                         state_indices_ptr=idx, cu_seqlens_ptr=idx,
                         has_initial_state_ptr="*i1")
            specs.append(AotSpec(ssd_state_passing_kernel, types,
                                 _state_passing_constexprs(head_dim, d_state),
                                 num_warps=STATE_PASSING_NUM_WARPS,
                                 label=f"state_passing-{label}"))

            types = int_types(ssd_chunk_scan_kernel)
            types.update(y_ptr=act, x_ptr=act, z_ptr=act, B_ptr=act, C_ptr=act, D_ptr=par,
                         dt_buf_ptr="*fp32", cs_buf_ptr="*fp32", states_ptr="*fp32",
                         cu_seqlens_ptr=idx)
            specs.append(AotSpec(ssd_chunk_scan_kernel, types,
                                 _chunk_scan_constexprs(chunk_size, head_dim, d_state, full,
                                                        full, dtype, dot_ieee),
                                 num_warps=CHUNK_NUM_WARPS, label=f"chunk_scan-{label}"))

            types = int_types(ssd_decode_kernel)
            types.update(x_ptr=act, dt_ptr=act, A_ptr=par, B_ptr=act, C_ptr=act, D_ptr=par,
                         z_ptr=act, dt_bias_ptr=par, state_ptr=ptr(state_dtype),
                         state_indices_ptr=idx, y_ptr=act, dt_min="fp32", dt_max="fp32")
            specs.append(AotSpec(ssd_decode_kernel, types,
                                 _decode_constexprs(head_dim, d_state, full, full, full, full),
                                 num_warps=DECODE_NUM_WARPS, label=f"decode-{label}"))
    return unique_specs(specs)
