"""Helpers for the SSM reference-kernel tests: packed batches, error checks, and the HF
Mamba / Mamba2 mixers re-run through our kernels.

The mixer helpers reuse the HF mixer's own linear layers (and Mamba2's gated RMSNorm):
only the conv and the scan go through ``llmserve_ssm.ops``, so a mismatch with the HF
mixer points at our kernels.
"""

from __future__ import annotations

import torch
from llmserve_ssm.ops import (
    causal_conv1d_update,
    causal_conv1d_varlen,
    selective_scan_varlen,
    selective_state_update,
    ssd_chunk_scan_varlen,
    ssd_state_update,
)

ATOL = 1e-5

# test id -> largest absolute error seen; printed by conftest with LLMSERVE_SSM_REPORT_ERRORS=1.
MAX_ERRORS: dict[str, float] = {}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = ATOL
) -> None:
    """Elementwise |actual - expected| <= atol (no relative slack), recording the max error."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    error = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    MAX_ERRORS[what] = max(error, MAX_ERRORS.get(what, 0.0))
    assert error <= atol, f"{what}: max abs error {error:.3g} > {atol:g}"


def cu_seqlens_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def perturb_(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.2) -> None:
    """Move every parameter off its structured init (A_log = log(1..n), D = 1, ...)."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


# --- Mamba1 mixer through our kernels -------------------------------------------------


def mamba_conv_weights(mixer) -> tuple[torch.Tensor, torch.Tensor | None]:
    return mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias


def mamba_prefill(
    mixer, hidden: torch.Tensor, cu_seqlens, conv_states, ssm_states, has_initial_state=None
):
    """HF ``MambaMixer`` on packed ``hidden`` (num_tokens, hidden_size); states in place."""
    xs, gate = mixer.in_proj(hidden).chunk(2, dim=-1)
    weight, bias = mamba_conv_weights(mixer)
    xs = causal_conv1d_varlen(
        xs, weight, bias, conv_states, cu_seqlens, has_initial_state, mixer.activation
    )
    dt, B, C = _mamba_dt_B_C(mixer, xs)
    y = selective_scan_varlen(
        xs,
        dt,
        -torch.exp(mixer.A_log.float()),
        B,
        C,
        mixer.D,
        gate,
        mixer.dt_proj.bias,
        True,
        ssm_states,
        cu_seqlens,
        has_initial_state,
    )
    return mixer.out_proj(y)


def mamba_decode(mixer, hidden: torch.Tensor, conv_states, ssm_states):
    """One token per sequence: ``hidden`` (num_seqs, hidden_size)."""
    xs, gate = mixer.in_proj(hidden).chunk(2, dim=-1)
    weight, bias = mamba_conv_weights(mixer)
    xs = causal_conv1d_update(xs, conv_states, weight, bias, mixer.activation)
    dt, B, C = _mamba_dt_B_C(mixer, xs)
    y = selective_state_update(
        ssm_states,
        xs,
        dt,
        -torch.exp(mixer.A_log.float()),
        B,
        C,
        mixer.D,
        gate,
        mixer.dt_proj.bias,
        True,
    )
    return mixer.out_proj(y)


def _mamba_dt_B_C(mixer, xs):
    dt, B, C = torch.split(
        mixer.x_proj(xs), [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=-1
    )
    return dt @ mixer.dt_proj.weight.T, B, C  # dt_proj's bias goes to the scan as delta_bias


def mamba_states(mixer, num_seqs: int) -> tuple[torch.Tensor, torch.Tensor]:
    conv = torch.zeros(num_seqs, mixer.conv_kernel_size - 1, mixer.intermediate_size)
    ssm = torch.zeros(num_seqs, mixer.intermediate_size, mixer.ssm_state_size)
    return conv, ssm


# --- Mamba2 mixer through our kernels -------------------------------------------------


def mamba2_prefill(
    mixer, hidden, cu_seqlens, conv_states, ssm_states, has_initial_state=None, chunk_size=None
):
    """HF ``Mamba2Mixer`` on packed ``hidden`` (num_tokens, hidden_size); states in place."""
    gate, xBC, dt = mixer.in_proj(hidden).split(
        [mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1
    )
    weight, bias = mamba_conv_weights(mixer)
    xBC = causal_conv1d_varlen(
        xBC, weight, bias, conv_states, cu_seqlens, has_initial_state, mixer.activation
    )
    x, B, C = _mamba2_x_B_C(mixer, xBC)
    y, final_states = ssd_chunk_scan_varlen(
        x,
        dt,
        -torch.exp(mixer.A_log.float()),
        B,
        C,
        chunk_size or mixer.chunk_size,
        D=mixer.D,
        dt_bias=mixer.dt_bias,
        dt_softplus=True,
        initial_states=ssm_states,
        cu_seqlens=cu_seqlens,
        has_initial_state=has_initial_state,
        dt_limit=mixer.time_step_limit,
    )
    ssm_states.copy_(final_states)
    return mixer.out_proj(mixer.norm(y.reshape(hidden.shape[0], -1), gate))


def mamba2_decode(mixer, hidden, conv_states, ssm_states):
    gate, xBC, dt = mixer.in_proj(hidden).split(
        [mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1
    )
    weight, bias = mamba_conv_weights(mixer)
    xBC = causal_conv1d_update(xBC, conv_states, weight, bias, mixer.activation)
    x, B, C = _mamba2_x_B_C(mixer, xBC)
    y = ssd_state_update(
        ssm_states,
        x,
        dt,
        -torch.exp(mixer.A_log.float()),
        B,
        C,
        D=mixer.D,
        dt_bias=mixer.dt_bias,
        dt_softplus=True,
        dt_limit=mixer.time_step_limit,
    )
    return mixer.out_proj(mixer.norm(y.reshape(hidden.shape[0], -1), gate))


def _mamba2_x_B_C(mixer, xBC):
    groups_width = mixer.n_groups * mixer.ssm_state_size
    x, B, C = torch.split(xBC, [mixer.intermediate_size, groups_width, groups_width], dim=-1)
    num_tokens = xBC.shape[0]
    return (
        x.reshape(num_tokens, mixer.num_heads, mixer.head_dim),
        B.reshape(num_tokens, mixer.n_groups, mixer.ssm_state_size),
        C.reshape(num_tokens, mixer.n_groups, mixer.ssm_state_size),
    )


def mamba2_states(mixer, num_seqs: int) -> tuple[torch.Tensor, torch.Tensor]:
    conv = torch.zeros(num_seqs, mixer.conv_kernel_size - 1, mixer.conv_dim)
    ssm = torch.zeros(num_seqs, mixer.num_heads, mixer.head_dim, mixer.ssm_state_size)
    return conv, ssm
