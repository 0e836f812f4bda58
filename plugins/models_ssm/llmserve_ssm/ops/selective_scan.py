"""Mamba1's selective scan: a diagonal linear recurrence per channel with input-dependent
step size and input-dependent B and C (one group: every channel shares B and C).

For channel ``d`` and state index ``n``, token by token:

    dt      = softplus(delta + delta_bias)           (each step optional)
    h[d, n] = exp(dt[d] * A[d, n]) * h[d, n] + dt[d] * B[n] * u[d]
    y[d]    = sum_n h[d, n] * C[n] + D[d] * u[d]
    y[d]   *= silu(z[d])                              (if z is given)

Layout: token-major, ``u``/``delta``/``z`` (num_tokens, dim), ``B``/``C``
(num_tokens, d_state), ``A`` (dim, d_state), a state (dim, d_state). All arithmetic is
fp32; outputs have ``u``'s dtype and states keep their own.

The varlen scan steps all sequences in lockstep (step ``t`` advances every sequence longer
than ``t``), the structure a parallel-over-sequences kernel has, while staying a plain
recurrence that is easy to trust.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmserve_ssm.ops._varlen import check_ndim, check_shape, initial_state_mask, unpack_cu_seqlens


def _check_params(
    A: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    dim: int,
    bias_name: str,
) -> int:
    check_ndim("A", A, 2)
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, d_state), got {tuple(A.shape)}")
    if D is not None:
        check_shape("D", D, (dim,))
    if delta_bias is not None:
        check_shape(bias_name, delta_bias, (dim,))
    return A.shape[1]


def _step_size(delta: torch.Tensor, bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    delta = delta.float()
    if bias is not None:
        delta = delta + bias.float()
    return F.softplus(delta) if softplus else delta


def _finish(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    if D is not None:
        y = y + u.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def selective_scan_varlen(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    ssm_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    has_initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Selective scan over a packed prefill batch.

    Args:
        u: (num_tokens, dim), the scan input (the conv output).
        delta: (num_tokens, dim), the step size before bias and softplus.
        A: (dim, d_state), real and normally negative (``-exp(A_log)``).
        B, C: (num_tokens, d_state).
        D: (dim,) skip weight, or None.
        z: (num_tokens, dim) gate, or None.
        delta_bias: (dim,) or None, added to ``delta`` before the softplus.
        delta_softplus: apply softplus to the step size.
        ssm_states: (num_seqs, dim, d_state). Row ``i`` is sequence ``i``'s starting state
            where ``has_initial_state[i]`` (zero otherwise) and is overwritten in place with
            its state after the last token.
        cu_seqlens: (num_seqs + 1,) integer sequence boundaries.
        has_initial_state: (num_seqs,) bool, or None for all False.

    Returns:
        y: (num_tokens, dim), dtype of ``u``.
    """
    check_ndim("u", u, 2)
    num_tokens, dim = u.shape
    check_shape("delta", delta, (num_tokens, dim))
    d_state = _check_params(A, D, delta_bias, dim, "delta_bias")
    check_shape("B", B, (num_tokens, d_state))
    check_shape("C", C, (num_tokens, d_state))
    if z is not None:
        check_shape("z", z, (num_tokens, dim))
    batch = unpack_cu_seqlens(cu_seqlens, num_tokens)
    check_shape("ssm_states", ssm_states, (batch.num_seqs, dim, d_state))
    has_state = initial_state_mask(has_initial_state, batch.num_seqs, u.device)

    dt = _step_size(delta, delta_bias, delta_softplus)  # (num_tokens, dim)
    decay = torch.exp(dt[:, :, None] * A.float())  # (num_tokens, dim, d_state)
    inputs = (dt * u.float())[:, :, None] * B.float()[:, None, :]  # (num_tokens, dim, d_state)
    C = C.float()

    state = torch.where(has_state[:, None, None], ssm_states.float(), 0.0)
    y = torch.empty(num_tokens, dim, dtype=torch.float32, device=u.device)
    for step in range(batch.max_len):
        seqs = (batch.lengths > step).nonzero().squeeze(1)
        tokens = batch.starts[seqs] + step
        state[seqs] = decay[tokens] * state[seqs] + inputs[tokens]
        y[tokens] = (state[seqs] * C[tokens][:, None, :]).sum(-1)
    ssm_states.copy_(state)
    return _finish(y, u, D, z)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decode token per sequence through the selective scan.

    Args:
        state: (num_seqs, dim, d_state), advanced by one step in place.
        x: (num_seqs, dim), the scan input.
        dt: (num_seqs, dim), the step size before bias and softplus.
        A: (dim, d_state).
        B, C: (num_seqs, d_state).
        D: (dim,) or None.
        z: (num_seqs, dim) or None.
        dt_bias: (dim,) or None.
        dt_softplus: apply softplus to the step size.

    Returns:
        y: (num_seqs, dim), dtype of ``x``.
    """
    check_ndim("x", x, 2)
    num_seqs, dim = x.shape
    check_shape("dt", dt, (num_seqs, dim))
    d_state = _check_params(A, D, dt_bias, dim, "dt_bias")
    check_shape("state", state, (num_seqs, dim, d_state))
    check_shape("B", B, (num_seqs, d_state))
    check_shape("C", C, (num_seqs, d_state))
    if z is not None:
        check_shape("z", z, (num_seqs, dim))

    dt = _step_size(dt, dt_bias, dt_softplus)
    decay = torch.exp(dt[:, :, None] * A.float())
    new_state = decay * state.float() + (dt * x.float())[:, :, None] * B.float()[:, None, :]
    state.copy_(new_state)
    y = (new_state * C.float()[:, None, :]).sum(-1)
    return _finish(y, x, D, z)
