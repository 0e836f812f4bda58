"""Mamba1's selective scan over the engine's SSM-state slots (see
``llmserve_ssm.ops.selective_scan`` for the recurrence and ``llmserve_ssm.ops.slots`` for the
slot convention).

Prefill: one program per (sequence, block of ``BLOCK_D`` channels). It keeps the
(BLOCK_D, d_state) state in registers, fp32, and walks the sequence's tokens in order
(a recurrence, not a chunked scan: Mamba1's decay differs per channel and state index, so
there is no cheap matrix form), writing each token's output; the final state goes back to
the sequence's slot in the slot tensor's dtype. A sequence whose ``has_initial_state`` is
False starts from zeros (its slot is not read).

Decode: the same step once, one program per (sequence, channel block).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_ssm.kernels.common import (
    AotSpec,
    _silu,
    _softplus,
    bool_tensor,
    check_float,
    check_state,
    check_vector,
    index_tensor,
    int_types,
    next_power_of_2,
    ptr,
    rows_contiguous,
    unique_specs,
)
from llmserve_ssm.ops._varlen import check_ndim, check_shape

#: Largest d_state the kernels hold in registers (Mamba1 checkpoints use 16).
MAX_D_STATE = 256


@triton.jit
def selective_scan_prefill_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr,
    state_ptr, state_indices_ptr, cu_seqlens_ptr, has_initial_state_ptr, y_ptr,
    dim, d_state,
    stride_u_tok, stride_delta_tok, stride_A_dim, stride_B_tok, stride_C_tok, stride_z_tok,
    stride_s_slot, stride_s_dim, stride_y_tok,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    end = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32)
    slot = tl.load(state_indices_ptr + seq).to(tl.int64)
    # States to read: d_state of them with an initial state, none without (an integer bound
    # rather than a scalar bool in the mask: the interpreter mistypes ``mask & scalar_bool``).
    n_read = tl.load(has_initial_state_ptr + seq).to(tl.int32) * d_state

    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    n = tl.arange(0, BLOCK_N)
    n_ok = n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    state_off = slot * stride_s_slot + d[:, None] * stride_s_dim + n[None, :]

    h = tl.load(state_ptr + state_off, mask=d_ok[:, None] & (n < n_read)[None, :],
                other=0.0).to(tl.float32)
    A = tl.load(A_ptr + d[:, None] * stride_A_dim + n[None, :], mask=dn_ok,
                other=0.0).to(tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta_bias = tl.load(delta_bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)

    first = start.to(tl.int64)
    for i in range(end - start):
        t = first + i
        u = tl.load(u_ptr + t * stride_u_tok + d, mask=d_ok, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + t * stride_delta_tok + d, mask=d_ok, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt += delta_bias
        if DELTA_SOFTPLUS:
            dt = _softplus(dt)
        B = tl.load(B_ptr + t * stride_B_tok + n, mask=n_ok, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + t * stride_C_tok + n, mask=n_ok, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]
        y = tl.sum(h * C[None, :], axis=1)
        if HAS_D:
            y += D * u
        if HAS_Z:
            z = tl.load(z_ptr + t * stride_z_tok + d, mask=d_ok, other=0.0).to(tl.float32)
            y *= _silu(z)
        tl.store(y_ptr + t * stride_y_tok + d, y.to(y_ptr.dtype.element_ty), mask=d_ok)

    tl.store(state_ptr + state_off, h.to(state_ptr.dtype.element_ty), mask=dn_ok)


@triton.jit
def selective_scan_decode_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr,
    state_ptr, state_indices_ptr, y_ptr,
    dim, d_state,
    stride_x_seq, stride_dt_seq, stride_A_dim, stride_B_seq, stride_C_seq, stride_z_seq,
    stride_s_slot, stride_s_dim, stride_y_seq,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    slot = tl.load(state_indices_ptr + seq).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    n = tl.arange(0, BLOCK_N)
    n_ok = n < d_state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    state_off = slot * stride_s_slot + d[:, None] * stride_s_dim + n[None, :]

    h = tl.load(state_ptr + state_off, mask=dn_ok, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + d[:, None] * stride_A_dim + n[None, :], mask=dn_ok,
                other=0.0).to(tl.float32)
    x = tl.load(x_ptr + seq * stride_x_seq + d, mask=d_ok, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + seq * stride_dt_seq + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        dt = _softplus(dt)
    B = tl.load(B_ptr + seq * stride_B_seq + n, mask=n_ok, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + seq * stride_C_seq + n, mask=n_ok, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
    y = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + seq * stride_z_seq + d, mask=d_ok, other=0.0).to(tl.float32)
        y *= _silu(z)
    tl.store(y_ptr + seq * stride_y_seq + d, y.to(y_ptr.dtype.element_ty), mask=d_ok)
    tl.store(state_ptr + state_off, h.to(state_ptr.dtype.element_ty), mask=dn_ok)


# --------------------------------------------------------------------------------------------
# Launch configuration (shared by the wrappers and ``aot_specs``).


def _block_n(d_state: int) -> int:
    return next_power_of_2(d_state)


def _block_d(dim: int, d_state: int) -> int:
    """About 1,024 state elements per program (32 channels at d_state 32, 64 at 16)."""
    return max(4, min(64, next_power_of_2(dim), 1024 // _block_n(d_state)))


def _num_warps(block_d: int, block_n: int) -> int:
    return 4 if block_d * block_n >= 1024 else 2


def _constexprs(dim: int, d_state: int, has_d: bool, has_z: bool, has_bias: bool,
                softplus: bool, prefill: bool) -> dict:
    names = (("HAS_DELTA_BIAS", "DELTA_SOFTPLUS") if prefill else ("HAS_DT_BIAS", "DT_SOFTPLUS"))
    return {"HAS_D": has_d, "HAS_Z": has_z, names[0]: has_bias, names[1]: softplus,
            "BLOCK_D": _block_d(dim, d_state), "BLOCK_N": _block_n(d_state)}


def _check_params(A: torch.Tensor, D: torch.Tensor | None, bias: torch.Tensor | None,
                  dim: int, bias_name: str) -> tuple[torch.Tensor, torch.Tensor | None,
                                                     torch.Tensor | None, int]:
    check_float("A", A)
    check_ndim("A", A, 2)
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    if not 1 <= d_state <= MAX_D_STATE:
        raise ValueError(f"A's d_state must be in 1..{MAX_D_STATE}, got {d_state}")
    return rows_contiguous(A), check_vector("D", D, dim), check_vector(bias_name, bias, dim), \
        d_state


def _check_rows(name: str, t: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    check_float(name, t)
    check_shape(name, t, shape)
    return rows_contiguous(t)


# --------------------------------------------------------------------------------------------
# Wrappers: the signatures of ``llmserve_ssm.ops.slots``.


def selective_scan_prefill(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
                           z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                           delta_softplus: bool, ssm_state: torch.Tensor,
                           state_indices: torch.Tensor, cu_seqlens: torch.Tensor,
                           has_initial_state: torch.Tensor) -> torch.Tensor:
    """Mamba1 scan over a packed batch; ``ssm_state`` (num_slots, dim, d_state).

    ``cu_seqlens`` is never read on the host: it must be valid, and ``state_indices`` in
    range and distinct.
    """
    check_float("u", u)
    check_ndim("u", u, 2)
    num_tokens, dim = u.shape
    delta = _check_rows("delta", delta, (num_tokens, dim))
    A, D, delta_bias, d_state = _check_params(A, D, delta_bias, dim, "delta_bias")
    B = _check_rows("B", B, (num_tokens, d_state))
    C = _check_rows("C", C, (num_tokens, d_state))
    if z is not None:
        z = _check_rows("z", z, (num_tokens, dim))
    check_ndim("cu_seqlens", cu_seqlens, 1)
    num_seqs = cu_seqlens.shape[0] - 1
    if num_seqs < 1:
        raise ValueError("cu_seqlens must hold at least one sequence (num_seqs + 1 >= 2 entries)")
    cu_seqlens = index_tensor("cu_seqlens", cu_seqlens, num_seqs + 1)
    state_indices = index_tensor("state_indices", state_indices, num_seqs)
    # None: no sequence has one, as the reference reads it.
    has_initial_state = bool_tensor("has_initial_state", has_initial_state, num_seqs,
                                    u.device)
    check_state("ssm_state", ssm_state, (dim, d_state))

    u = rows_contiguous(u)
    y = torch.empty(num_tokens, dim, dtype=u.dtype, device=u.device)
    if num_tokens == 0 or dim == 0:
        return y
    constexprs = _constexprs(dim, d_state, D is not None, z is not None,
                             delta_bias is not None, bool(delta_softplus), prefill=True)
    grid = (num_seqs, triton.cdiv(dim, constexprs["BLOCK_D"]))
    selective_scan_prefill_kernel[grid](
        u, delta, A, B, C, D if D is not None else A, z if z is not None else u,
        delta_bias if delta_bias is not None else A,
        ssm_state, state_indices, cu_seqlens, has_initial_state, y,
        dim, d_state,
        u.stride(0), delta.stride(0), A.stride(0), B.stride(0), C.stride(0),
        z.stride(0) if z is not None else 0, ssm_state.stride(0), ssm_state.stride(1),
        y.stride(0),
        num_warps=_num_warps(constexprs["BLOCK_D"], constexprs["BLOCK_N"]), **constexprs,
    )
    return y


def selective_scan_decode(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                          B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
                          z: torch.Tensor | None, dt_bias: torch.Tensor | None,
                          dt_softplus: bool, ssm_state: torch.Tensor,
                          state_indices: torch.Tensor) -> torch.Tensor:
    """One Mamba1 step per sequence; ``x`` (num_seqs, dim). No host sync."""
    check_float("x", x)
    check_ndim("x", x, 2)
    num_seqs, dim = x.shape
    dt = _check_rows("dt", dt, (num_seqs, dim))
    A, D, dt_bias, d_state = _check_params(A, D, dt_bias, dim, "dt_bias")
    B = _check_rows("B", B, (num_seqs, d_state))
    C = _check_rows("C", C, (num_seqs, d_state))
    if z is not None:
        z = _check_rows("z", z, (num_seqs, dim))
    state_indices = index_tensor("state_indices", state_indices, num_seqs)
    check_state("ssm_state", ssm_state, (dim, d_state))

    x = rows_contiguous(x)
    y = torch.empty(num_seqs, dim, dtype=x.dtype, device=x.device)
    if num_seqs == 0 or dim == 0:
        return y
    constexprs = _constexprs(dim, d_state, D is not None, z is not None, dt_bias is not None,
                             bool(dt_softplus), prefill=False)
    grid = (num_seqs, triton.cdiv(dim, constexprs["BLOCK_D"]))
    selective_scan_decode_kernel[grid](
        x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A,
        ssm_state, state_indices, y,
        dim, d_state,
        x.stride(0), dt.stride(0), A.stride(0), B.stride(0), C.stride(0),
        z.stride(0) if z is not None else 0, ssm_state.stride(0), ssm_state.stride(1),
        y.stride(0),
        num_warps=_num_warps(constexprs["BLOCK_D"], constexprs["BLOCK_N"]), **constexprs,
    )
    return y


# --------------------------------------------------------------------------------------------
# Ahead-of-time configurations.

#: (dim, d_state): Mamba-130M to Mamba-2.8B (d_inner 1536 to 5120, the same blocks) use
#: d_state 16; a wider state for hybrids that use more. Only the block sizes depend on dim.
AOT_SHAPES = ((5120, 16), (1024, 64))


def aot_specs(dtype: torch.dtype) -> list[AotSpec]:
    """Prefill and decode for each of ``AOT_SHAPES`` with every input and the state in
    ``dtype``, D, z, a bias and softplus as Mamba uses them, int32 indices; plus, for the
    first shape, fp32 state and parameters (A, D, bias) with int64 indices, and the variant
    without D, z or bias."""
    specs = []
    variants = [(dtype, dtype, torch.int32, True)]
    if dtype != torch.float32:
        variants.append((torch.float32, torch.float32, torch.int64, True))
    variants.append((dtype, dtype, torch.int32, False))
    for state_dtype, param_dtype, index_dtype, full in variants:
        for n, (dim, d_state) in enumerate(AOT_SHAPES):
            if (state_dtype != dtype or not full) and n > 0:
                continue
            label = (f"dim{dim}-n{d_state}-{'dzbias' if full else 'plain'}"
                     f"-state_{str(state_dtype)[6:]}-param_{str(param_dtype)[6:]}"
                     f"-idx_{str(index_dtype)[6:]}")
            for kernel, prefill in ((selective_scan_prefill_kernel, True),
                                    (selective_scan_decode_kernel, False)):
                bias = "delta_bias_ptr" if prefill else "dt_bias_ptr"
                types = int_types(kernel)
                types.update({
                    "A_ptr": ptr(param_dtype), "D_ptr": ptr(param_dtype), bias: ptr(param_dtype),
                    "B_ptr": ptr(dtype), "C_ptr": ptr(dtype), "z_ptr": ptr(dtype),
                    "state_ptr": ptr(state_dtype), "state_indices_ptr": ptr(index_dtype),
                    "y_ptr": ptr(dtype)})
                if prefill:
                    types.update(u_ptr=ptr(dtype), delta_ptr=ptr(dtype),
                                 cu_seqlens_ptr=ptr(index_dtype), has_initial_state_ptr="*i1")
                else:
                    types.update(x_ptr=ptr(dtype), dt_ptr=ptr(dtype))
                constexprs = _constexprs(dim, d_state, full, full, full, full, prefill)
                specs.append(AotSpec(kernel, types, constexprs,
                                     num_warps=_num_warps(constexprs["BLOCK_D"],
                                                          constexprs["BLOCK_N"]),
                                     label=f"{'prefill' if prefill else 'decode'}-{label}"))
    return unique_specs(specs)
