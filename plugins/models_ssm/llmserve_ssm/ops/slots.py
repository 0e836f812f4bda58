"""The kernels as the model layers call them: over the engine's state-slot tensors.

The engine keeps each state layer's conv and SSM state as one tensor per kind with a row per
*slot* (``[num_slots, ...]``); a running request owns one slot, the same in every layer
(``ForwardContext.state_slots``). These functions take the whole slot tensor plus
``state_indices`` (num_seqs,), the slot of each sequence of the batch, and read and write
those rows in place, so a kernel that can index slots itself (the Triton ones) never copies
a state it does not need. Here, over the torch reference kernels, the rows are gathered,
advanced, and scattered back.

A sequence whose ``has_initial_state`` is False starts from zeros whatever its slot holds
(a new request takes a slot a finished one left).

``SlotKernels`` is the set of six functions a layer calls; ``REFERENCE_KERNELS`` are these,
and ``llmserve_ssm.kernels`` offers the Triton set with the same signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from llmserve_ssm.ops.causal_conv1d import causal_conv1d_update, causal_conv1d_varlen
from llmserve_ssm.ops.selective_scan import selective_scan_varlen, selective_state_update
from llmserve_ssm.ops.ssd import NO_DT_LIMIT, ssd_chunk_scan_varlen, ssd_state_update


def conv1d_prefill(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   conv_state: torch.Tensor, state_indices: torch.Tensor,
                   cu_seqlens: torch.Tensor, has_initial_state: torch.Tensor,
                   activation: str | None = "silu") -> torch.Tensor:
    """Causal conv over a packed batch; ``conv_state`` (num_slots, K-1, dim)."""
    states = conv_state[state_indices]
    y = causal_conv1d_varlen(x, weight, bias, states, cu_seqlens, has_initial_state, activation)
    conv_state[state_indices] = states
    return y


def conv1d_decode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  conv_state: torch.Tensor, state_indices: torch.Tensor,
                  activation: str | None = "silu") -> torch.Tensor:
    """One token per sequence through the conv; ``x`` (num_seqs, dim)."""
    states = conv_state[state_indices]
    y = causal_conv1d_update(x, states, weight, bias, activation)
    conv_state[state_indices] = states
    return y


def selective_scan_prefill(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
                           z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                           delta_softplus: bool, ssm_state: torch.Tensor,
                           state_indices: torch.Tensor, cu_seqlens: torch.Tensor,
                           has_initial_state: torch.Tensor) -> torch.Tensor:
    """Mamba1 scan over a packed batch; ``ssm_state`` (num_slots, dim, d_state)."""
    states = ssm_state[state_indices]
    y = selective_scan_varlen(u, delta, A, B, C, D, z, delta_bias, delta_softplus, states,
                              cu_seqlens, has_initial_state)
    ssm_state[state_indices] = states
    return y


def selective_scan_decode(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                          B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
                          z: torch.Tensor | None, dt_bias: torch.Tensor | None,
                          dt_softplus: bool, ssm_state: torch.Tensor,
                          state_indices: torch.Tensor) -> torch.Tensor:
    """One Mamba1 step per sequence."""
    states = ssm_state[state_indices]
    y = selective_state_update(states, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    ssm_state[state_indices] = states
    return y


def ssd_prefill(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, chunk_size: int, D: torch.Tensor | None,
                z: torch.Tensor | None, dt_bias: torch.Tensor | None, dt_softplus: bool,
                ssm_state: torch.Tensor, state_indices: torch.Tensor,
                cu_seqlens: torch.Tensor, has_initial_state: torch.Tensor,
                dt_limit: tuple[float, float] = NO_DT_LIMIT) -> torch.Tensor:
    """Mamba2 chunked SSD over a packed batch; ``ssm_state`` (num_slots, H, P, N)."""
    y, final = ssd_chunk_scan_varlen(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus,
                                     ssm_state[state_indices], cu_seqlens, has_initial_state,
                                     dt_limit)
    ssm_state[state_indices] = final.to(ssm_state.dtype)
    return y


def ssd_decode(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
               dt_bias: torch.Tensor | None, dt_softplus: bool, ssm_state: torch.Tensor,
               state_indices: torch.Tensor,
               dt_limit: tuple[float, float] = NO_DT_LIMIT) -> torch.Tensor:
    """One Mamba2 step per sequence."""
    states = ssm_state[state_indices]
    y = ssd_state_update(states, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    ssm_state[state_indices] = states
    return y


@dataclass(frozen=True)
class SlotKernels:
    """The six kernels a Mamba layer calls, all with the signatures above."""

    name: str
    conv1d_prefill: Callable[..., torch.Tensor]
    conv1d_decode: Callable[..., torch.Tensor]
    selective_scan_prefill: Callable[..., torch.Tensor]
    selective_scan_decode: Callable[..., torch.Tensor]
    ssd_prefill: Callable[..., torch.Tensor]
    ssd_decode: Callable[..., torch.Tensor]


REFERENCE_KERNELS = SlotKernels("torch", conv1d_prefill, conv1d_decode, selective_scan_prefill,
                                selective_scan_decode, ssd_prefill, ssd_decode)
