"""Seeded random inputs for the three kernel families, packed over ``lengths``.

Each builder returns a dict of tensors for the prefill kernel, with per-token tensors under
the names the kernels use; ``slice_tokens`` cuts a token range out of such a dict.
"""

from __future__ import annotations

import torch

PER_TOKEN = {"x", "u", "delta", "dt", "B", "C", "z"}


def conv_inputs(
    num_tokens: int, num_seqs: int, seed: int, dim: int = 6, kernel_size: int = 4
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(num_tokens, dim, generator=gen),
        "weight": torch.randn(dim, kernel_size, generator=gen),
        "bias": torch.randn(dim, generator=gen),
        "states": torch.randn(num_seqs, kernel_size - 1, dim, generator=gen),
    }


def scan_inputs(num_tokens: int, num_seqs: int, seed: int, dim: int = 6, d_state: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(num_tokens, dim, generator=gen),
        "delta": torch.randn(num_tokens, dim, generator=gen),
        "A": -torch.exp(0.5 * torch.randn(dim, d_state, generator=gen)),
        "B": torch.randn(num_tokens, d_state, generator=gen),
        "C": torch.randn(num_tokens, d_state, generator=gen),
        "D": torch.randn(dim, generator=gen),
        "z": torch.randn(num_tokens, dim, generator=gen),
        "delta_bias": torch.randn(dim, generator=gen),
        "states": torch.randn(num_seqs, dim, d_state, generator=gen),
    }


def ssd_inputs(
    num_tokens: int,
    num_seqs: int,
    seed: int,
    num_heads: int = 4,
    head_dim: int = 3,
    n_groups: int = 2,
    d_state: int = 5,
    D_per_channel: bool = False,
    with_z: bool = True,
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(num_tokens, num_heads, head_dim, generator=gen),
        "dt": torch.randn(num_tokens, num_heads, generator=gen),
        "A": -torch.exp(0.5 * torch.randn(num_heads, generator=gen)),
        "B": torch.randn(num_tokens, n_groups, d_state, generator=gen),
        "C": torch.randn(num_tokens, n_groups, d_state, generator=gen),
        "D": torch.randn(
            *((num_heads, head_dim) if D_per_channel else (num_heads,)), generator=gen
        ),
        "dt_bias": torch.randn(num_heads, generator=gen),
        "states": torch.randn(num_seqs, num_heads, head_dim, d_state, generator=gen),
    }
    inputs["z"] = torch.randn(num_tokens, num_heads, head_dim, generator=gen) if with_z else None
    return inputs


def slice_tokens(inputs: dict, start: int, end: int) -> dict:
    return {k: (v[start:end] if k in PER_TOKEN and v is not None else v) for k, v in inputs.items()}


def run_conv(inputs, cu_seqlens, states, has_initial_state):
    from llmserve_ssm.ops import causal_conv1d_varlen

    return causal_conv1d_varlen(
        inputs["x"], inputs["weight"], inputs["bias"], states, cu_seqlens, has_initial_state, "silu"
    )


def run_scan(inputs, cu_seqlens, states, has_initial_state):
    from llmserve_ssm.ops import selective_scan_varlen

    i = inputs
    return selective_scan_varlen(
        i["u"],
        i["delta"],
        i["A"],
        i["B"],
        i["C"],
        i["D"],
        i["z"],
        i["delta_bias"],
        True,
        states,
        cu_seqlens,
        has_initial_state,
    )


def run_ssd(inputs, cu_seqlens, states, has_initial_state, chunk_size=8, sequential=False):
    """SSD prefill with the same in-place state contract as the other two kernels."""
    from llmserve_ssm.ops import ssd_chunk_scan_varlen, ssd_scan_sequential

    i = inputs
    kwargs = {
        "D": i["D"],
        "z": i["z"],
        "dt_bias": i["dt_bias"],
        "dt_softplus": True,
        "initial_states": states,
        "cu_seqlens": cu_seqlens,
        "has_initial_state": has_initial_state,
    }
    if sequential:
        y, final = ssd_scan_sequential(i["x"], i["dt"], i["A"], i["B"], i["C"], **kwargs)
    else:
        y, final = ssd_chunk_scan_varlen(
            i["x"], i["dt"], i["A"], i["B"], i["C"], chunk_size, **kwargs
        )
    states.copy_(final)
    return y
