"""Mamba2's state-space duality (SSD): a multi-head scan whose decay is one scalar per head.

Per head ``h`` (of ``num_heads``, each ``head_dim`` wide) with group ``g = h // (num_heads //
n_groups)`` (heads share B and C by group), token by token:

    dt       = clamp(softplus(dt + dt_bias), *dt_limit)        (bias, softplus optional)
    S[h]     = exp(dt[h] * A[h]) * S[h] + dt[h] * outer(x[h], B[g])   (S[h]: head_dim x d_state)
    y[h]     = S[h] @ C[g] + D[h] * x[h]
    y[h]    *= silu(z[h])                                             (if z is given)

``ssd_scan_sequential`` computes exactly that, one token at a time: it is the oracle.
``ssd_chunk_scan_varlen`` computes the same thing the way the Mamba2 paper (section 6) and
its kernels do: tokens are cut into chunks of ``chunk_size``; inside a chunk the output is a
masked quadratic form (attention-like, ``C B^T`` times the decay mask); across chunks only
one state per chunk is carried. Chunks never cross sequence boundaries: each sequence is
cut from its own first token, and its last chunk is padded with ``dt = 0`` tokens (decay 1,
zero input), which change nothing.

Layout: token-major, ``x``/``z`` (num_tokens, num_heads, head_dim), ``dt``
(num_tokens, num_heads), ``B``/``C`` (num_tokens, n_groups, d_state), ``A`` (num_heads,),
``D`` (num_heads,) or (num_heads, head_dim), states (num_seqs, num_heads, head_dim, d_state)
as in HF and vLLM. All arithmetic is fp32; ``y`` has ``x``'s dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmserve_ssm.ops._varlen import check_ndim, check_shape, initial_state_mask, unpack_cu_seqlens

NO_DT_LIMIT = (0.0, math.inf)


def _check_heads(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
) -> tuple[int, int, int, int, int]:
    """Check the shared shapes; returns (rows, num_heads, head_dim, n_groups, d_state).

    ``rows`` is num_tokens for a scan and num_seqs for a decode step.
    """
    check_ndim("x", x, 3)
    rows, num_heads, head_dim = x.shape
    check_shape("dt", dt, (rows, num_heads))
    check_shape("A", A, (num_heads,))
    check_ndim("B", B, 3)
    if B.shape[0] != rows:
        raise ValueError(f"B must have shape ({rows}, n_groups, d_state), got {tuple(B.shape)}")
    n_groups, d_state = B.shape[1:]
    if num_heads % n_groups != 0:
        raise ValueError(f"B's n_groups ({n_groups}) must divide num_heads ({num_heads})")
    check_shape("C", C, (rows, n_groups, d_state))
    if D is not None and tuple(D.shape) not in ((num_heads,), (num_heads, head_dim)):
        raise ValueError(
            f"D must have shape ({num_heads},) or ({num_heads}, {head_dim}), got {tuple(D.shape)}"
        )
    if z is not None:
        check_shape("z", z, (rows, num_heads, head_dim))
    if dt_bias is not None:
        check_shape("dt_bias", dt_bias, (num_heads,))
    return rows, num_heads, head_dim, n_groups, d_state


def _step_size(
    dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float]
) -> torch.Tensor:
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def _per_head(groups: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., n_groups, d_state) -> (..., num_heads, d_state): each head reads its group."""
    return groups.float().repeat_interleave(num_heads // groups.shape[-2], dim=-2)


def _skip_and_gate(
    y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    if D is not None:
        D = D.float() if D.dim() == 2 else D.float()[:, None]
        y = y + x.float() * D
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def _starting_states(
    initial_states: torch.Tensor | None,
    has_initial_state: torch.Tensor | None,
    shape: tuple[int, int, int, int],
    device: torch.device,
) -> torch.Tensor:
    """fp32 (num_seqs, num_heads, head_dim, d_state): the given states where flagged, else 0."""
    num_seqs = shape[0]
    if initial_states is None:
        if has_initial_state is not None and bool(
            initial_state_mask(has_initial_state, num_seqs, device).any()
        ):
            raise ValueError("has_initial_state is set for a sequence but initial_states is None")
        return torch.zeros(shape, dtype=torch.float32, device=device)
    check_shape("initial_states", initial_states, shape)
    if has_initial_state is None:
        return initial_states.float().clone()
    has_state = initial_state_mask(has_initial_state, num_seqs, device)
    return torch.where(has_state[:, None, None, None], initial_states.float(), 0.0)


def _segment_sum(log_decay: torch.Tensor) -> torch.Tensor:
    """(..., L) -> (..., L, L) with out[..., l, s] = sum(log_decay[..., s+1 : l+1]) for l >= s,
    and -inf above the diagonal (so exp gives the causal decay mask).

    Summing the masked terms, rather than subtracting two cumulative sums, keeps long
    chunks from losing precision to cancellation.
    """
    length = log_decay.shape[-1]
    terms = log_decay[..., :, None].expand(*log_decay.shape, length)  # terms[..., k, s] = a[k]
    strictly_below = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril(-1)
    sums = terms.masked_fill(~strictly_below, 0.0).cumsum(dim=-2)
    causal = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril()
    return sums.masked_fill(~causal, -math.inf)


def ssd_scan_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    has_initial_state: torch.Tensor | None = None,
    dt_limit: tuple[float, float] = NO_DT_LIMIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD recurrence, token by token: the oracle for the chunked form.

    Same arguments and results as ``ssd_chunk_scan_varlen`` without ``chunk_size``;
    ``cu_seqlens`` None means one sequence of all tokens.
    """
    num_tokens, num_heads, head_dim, _, d_state = _check_heads(x, dt, A, B, C, D, z, dt_bias)
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, num_tokens], device=x.device)
    batch = unpack_cu_seqlens(cu_seqlens, num_tokens)
    states = _starting_states(
        initial_states, has_initial_state, (batch.num_seqs, num_heads, head_dim, d_state), x.device
    )

    dt = _step_size(dt, dt_bias, dt_softplus, dt_limit)
    B, C, A = _per_head(B, num_heads), _per_head(C, num_heads), A.float()
    y = torch.empty(num_tokens, num_heads, head_dim, dtype=torch.float32, device=x.device)
    for seq, (start, end) in enumerate(batch.bounds()):
        state = states[seq]  # (num_heads, head_dim, d_state)
        for t in range(start, end):
            decay = torch.exp(dt[t] * A)[:, None, None]
            state = (
                decay * state + dt[t][:, None, None] * x[t].float()[:, :, None] * B[t][:, None, :]
            )
            y[t] = (state * C[t][:, None, :]).sum(-1)
        states[seq] = state
    final_dtype = torch.float32 if initial_states is None else initial_states.dtype
    return _skip_and_gate(y, x, D, z), states.to(final_dtype)


def ssd_chunk_scan_varlen(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    has_initial_state: torch.Tensor | None = None,
    dt_limit: tuple[float, float] = NO_DT_LIMIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD over a packed prefill batch.

    Args:
        x: (num_tokens, num_heads, head_dim).
        dt: (num_tokens, num_heads), the step size before bias, softplus and clamp.
        A: (num_heads,), normally negative (``-exp(A_log)``).
        B, C: (num_tokens, n_groups, d_state); n_groups divides num_heads.
        chunk_size: tokens per chunk (any positive int; results do not depend on it).
        D: (num_heads,) or (num_heads, head_dim) skip weight, or None.
        z: (num_tokens, num_heads, head_dim) gate, or None.
        dt_bias: (num_heads,) or None.
        dt_softplus: apply softplus to the step size.
        initial_states: (num_seqs, num_heads, head_dim, d_state) or None (zeros). Not
            modified.
        cu_seqlens: (num_seqs + 1,) integer sequence boundaries; None: one sequence.
        has_initial_state: (num_seqs,) bool: which rows of ``initial_states`` to use (the
            rest start at zero); None: all of them when ``initial_states`` is given.
        dt_limit: (min, max) clamp of the step size, HF's ``time_step_limit``.

    Returns:
        y: (num_tokens, num_heads, head_dim), dtype of ``x``.
        final_states: (num_seqs, num_heads, head_dim, d_state), each sequence's state after
            its last token; dtype of ``initial_states``, float32 when it is None.
    """
    num_tokens, num_heads, head_dim, _, d_state = _check_heads(x, dt, A, B, C, D, z, dt_bias)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, num_tokens], device=x.device)
    batch = unpack_cu_seqlens(cu_seqlens, num_tokens)
    states = _starting_states(
        initial_states, has_initial_state, (batch.num_seqs, num_heads, head_dim, d_state), x.device
    )

    # Where each token lands in the chunked layout (num_chunks, chunk_size, ...).
    chunks_per_seq = (batch.lengths + chunk_size - 1) // chunk_size
    first_chunk = chunks_per_seq.cumsum(0) - chunks_per_seq
    seq_of_token = torch.repeat_interleave(
        torch.arange(batch.num_seqs, device=x.device), batch.lengths
    )
    position = torch.arange(num_tokens, device=x.device) - batch.starts[seq_of_token]
    chunk_of_token = first_chunk[seq_of_token] + position // chunk_size
    slot_of_token = position % chunk_size
    num_chunks = int(chunks_per_seq.sum())

    def to_chunks(packed: torch.Tensor) -> torch.Tensor:
        chunked = packed.new_zeros(num_chunks, chunk_size, *packed.shape[1:])
        chunked[chunk_of_token, slot_of_token] = packed
        return chunked

    dt = _step_size(dt, dt_bias, dt_softplus, dt_limit)
    # Index letters: c chunk, l and s positions in a chunk, h head, p head_dim, n d_state.
    dt_x = to_chunks(dt[:, :, None] * x.float())  # (c, l, h, p): padding slots are 0
    B = to_chunks(_per_head(B, num_heads))  # (c, l, h, n)
    C = to_chunks(_per_head(C, num_heads))  # (c, l, h, n)
    log_decay = to_chunks(dt * A.float()).transpose(1, 2)  # (c, h, l): padding slots are 0
    log_decay_cumsum = log_decay.cumsum(-1)  # (c, h, l): log decay from chunk start through l

    # 1. Within a chunk: y[l] = sum_{s <= l} (C[l] . B[s]) * decay(s -> l) * dt[s] x[s].
    decay_mask = torch.exp(_segment_sum(log_decay))  # (c, h, l, s)
    scores = torch.einsum("clhn,cshn->chls", C, B) * decay_mask
    y_intra = torch.einsum("chls,cshp->clhp", scores, dt_x)

    # 2. Each chunk's own contribution to the state at its end, as if it started at zero.
    #    decay(l -> end) is the last row of the decay mask: a sum of terms, not a difference
    #    of two long cumulative sums, which loses digits once chunks are long.
    decay_to_end = decay_mask[:, :, -1, :]  # (c, h, l)
    chunk_states = torch.einsum("chl,clhn,clhp->chpn", decay_to_end, B, dt_x)
    chunk_decay = torch.exp(log_decay_cumsum[:, :, -1])  # (c, h)

    # 3. Pass states across the chunks of each sequence: the j-th chunks of all sequences
    #    advance together, so this loops over chunks per sequence, not over tokens.
    start_states = torch.empty_like(chunk_states)
    for j in range(int(chunks_per_seq.max())):
        seqs = (chunks_per_seq > j).nonzero().squeeze(1)
        chunks = first_chunk[seqs] + j
        start_states[chunks] = states[seqs]
        states[seqs] = chunk_decay[chunks][:, :, None, None] * states[seqs] + chunk_states[chunks]

    # 4. What the state at the chunk start contributes at each position of the chunk.
    decay_from_start = torch.exp(log_decay_cumsum)  # (c, h, l)
    y_inter = torch.einsum("clhn,chpn,chl->clhp", C, start_states, decay_from_start)

    y = (y_intra + y_inter)[chunk_of_token, slot_of_token]  # back to (num_tokens, h, p)
    final_dtype = torch.float32 if initial_states is None else initial_states.dtype
    return _skip_and_gate(y, x, D, z), states.to(final_dtype)


def ssd_state_update(
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
    dt_limit: tuple[float, float] = NO_DT_LIMIT,
) -> torch.Tensor:
    """One decode token per sequence through the SSD recurrence.

    Args:
        state: (num_seqs, num_heads, head_dim, d_state), advanced one step in place.
        x: (num_seqs, num_heads, head_dim).
        dt: (num_seqs, num_heads), before bias, softplus and clamp.
        A: (num_heads,).
        B, C: (num_seqs, n_groups, d_state).
        D: (num_heads,) or (num_heads, head_dim), or None.
        z: (num_seqs, num_heads, head_dim) or None.
        dt_bias: (num_heads,) or None.
        dt_softplus: apply softplus to the step size.
        dt_limit: (min, max) clamp of the step size.

    Returns:
        y: (num_seqs, num_heads, head_dim), dtype of ``x``.
    """
    num_seqs, num_heads, head_dim, _, d_state = _check_heads(x, dt, A, B, C, D, z, dt_bias)
    check_shape("state", state, (num_seqs, num_heads, head_dim, d_state))

    dt = _step_size(dt, dt_bias, dt_softplus, dt_limit)[:, :, None, None]  # (s, h, 1, 1)
    decay = torch.exp(dt * A.float()[:, None, None])
    B, C = _per_head(B, num_heads), _per_head(C, num_heads)  # (s, h, n)
    new_state = decay * state.float() + dt * x.float()[..., None] * B[:, :, None, :]
    state.copy_(new_state)
    y = (new_state * C[:, :, None, :]).sum(-1)
    return _skip_and_gate(y, x, D, z)
