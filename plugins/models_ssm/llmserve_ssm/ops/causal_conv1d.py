"""Depthwise causal 1-D convolution, the short conv in front of every Mamba scan.

Layout: token-major throughout this package. ``x`` is (num_tokens, dim), as it comes out
of ``in_proj``, and a conv state is (kernel_size - 1, dim): the last ``kernel_size - 1``
inputs of a sequence, oldest first. ``weight`` is (dim, kernel_size), HF's
``conv1d.weight.squeeze(1)``, so output channel ``d`` at time ``t`` is

    y[t, d] = act(bias[d] + sum_k weight[d, k] * x[t - (kernel_size - 1) + k, d])

where inputs before the sequence start come from its conv state (zeros when it has none).

Unlike HF's cache, which keeps the last ``kernel_size`` inputs, the state here keeps
``kernel_size - 1`` (as vLLM does): the oldest of HF's columns never reaches an output.
All arithmetic is fp32; ``y`` has ``x``'s dtype and states keep their own.
"""

from __future__ import annotations

import torch

from llmserve_ssm.ops._varlen import (
    apply_activation,
    check_activation,
    check_ndim,
    check_shape,
    initial_state_mask,
    unpack_cu_seqlens,
)


def _check_weights(weight: torch.Tensor, bias: torch.Tensor | None, dim: int) -> int:
    check_ndim("weight", weight, 2)
    if weight.shape[0] != dim:
        raise ValueError(
            f"weight must have shape (dim={dim}, kernel_size), got {tuple(weight.shape)}"
        )
    kernel_size = weight.shape[1]
    if kernel_size < 2:
        raise ValueError(f"weight must have kernel_size >= 2, got {kernel_size}")
    if bias is not None:
        check_shape("bias", bias, (dim,))
    return kernel_size


def causal_conv1d_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    has_initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Causal depthwise conv over a packed prefill batch.

    Args:
        x: (num_tokens, dim), the packed inputs.
        weight: (dim, kernel_size).
        bias: (dim,) or None.
        conv_states: (num_seqs, kernel_size - 1, dim). Row ``i`` is read as sequence
            ``i``'s earlier inputs where ``has_initial_state[i]``, and is overwritten in
            place with the last ``kernel_size - 1`` inputs of the sequence (counting the
            earlier ones, so a sequence shorter than that keeps part of its old state).
        cu_seqlens: (num_seqs + 1,) integer sequence boundaries (see ``_varlen``).
        has_initial_state: (num_seqs,) bool, or None for all False (states start at zero).
        activation: "silu" / "swish" or None.

    Returns:
        y: (num_tokens, dim), dtype of ``x``.
    """
    check_ndim("x", x, 2)
    num_tokens, dim = x.shape
    kernel_size = _check_weights(weight, bias, dim)
    check_activation(activation)
    batch = unpack_cu_seqlens(cu_seqlens, num_tokens)
    check_shape("conv_states", conv_states, (batch.num_seqs, kernel_size - 1, dim))
    has_state = initial_state_mask(has_initial_state, batch.num_seqs, x.device).tolist()

    weight = weight.float()
    y = torch.empty(num_tokens, dim, dtype=torch.float32, device=x.device)
    # One sequence at a time: each sees only its own history, which is the whole point.
    for seq, (start, end) in enumerate(batch.bounds()):
        history = (
            conv_states[seq].float()
            if has_state[seq]
            else x.new_zeros(kernel_size - 1, dim, dtype=torch.float32)
        )
        padded = torch.cat([history, x[start:end].float()])  # (len + kernel_size - 1, dim)
        windows = padded.unfold(0, kernel_size, 1)  # (len, dim, kernel_size), oldest input first
        y[start:end] = (windows * weight).sum(-1)
        conv_states[seq].copy_(padded[-(kernel_size - 1) :])
    if bias is not None:
        y = y + bias.float()
    return apply_activation(y, activation).to(x.dtype)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """One decode token per sequence through the causal conv.

    Args:
        x: (num_seqs, dim), the new input of each sequence.
        conv_state: (num_seqs, kernel_size - 1, dim), the earlier inputs; shifted left by
            one and appended with ``x`` in place.
        weight: (dim, kernel_size).
        bias: (dim,) or None.
        activation: "silu" / "swish" or None.

    Returns:
        y: (num_seqs, dim), dtype of ``x``.
    """
    check_ndim("x", x, 2)
    num_seqs, dim = x.shape
    kernel_size = _check_weights(weight, bias, dim)
    check_activation(activation)
    check_shape("conv_state", conv_state, (num_seqs, kernel_size - 1, dim))

    window = torch.cat(
        [conv_state.float(), x.float()[:, None, :]], dim=1
    )  # (num_seqs, kernel_size, dim)
    y = torch.einsum("skd,dk->sd", window, weight.float())
    if bias is not None:
        y = y + bias.float()
    conv_state.copy_(window[:, 1:])
    return apply_activation(y, activation).to(x.dtype)
