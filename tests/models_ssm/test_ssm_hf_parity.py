"""Our reference kernels against HF transformers' own torch implementations, fp32.

transformers 5.x has no separate ``slow_forward`` / ``torch_forward``: ``MambaMixer.forward``
and ``Mamba2Mixer.forward`` run the torch path (module functions ``causal_conv1d_fn``,
``mamba_selective_scan``, ``mamba2_chunk_scan`` and the ``*_update`` functions) whenever the
``causal_conv1d`` / ``mamba_ssm`` packages are absent, as on this CPU machine. The first test
checks that, so these comparisons cannot silently be against CUDA kernels.

Compared:
- whole mixers: HF's mixer output for each sequence alone vs our kernels (inside the HF
  mixer's own projections and norm) on the packed batch, also split into two prefill calls
  and as prefill + decode steps (vs HF's full forward: HF Mamba1 cannot resume a prefill);
- the scan functions with their final states (HF Mamba2's with an initial state), and the
  decode-step functions with their updated states.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from llmserve_ssm.ops import (
    causal_conv1d_update,
    selective_scan_varlen,
    selective_state_update,
    ssd_chunk_scan_varlen,
    ssd_state_update,
)
from ssm_testutil import (
    assert_close,
    cu_seqlens_of,
    mamba2_decode,
    mamba2_prefill,
    mamba2_states,
    mamba_decode,
    mamba_prefill,
    mamba_states,
    perturb_,
)
from transformers import Mamba2Config, MambaConfig
from transformers.models.mamba import modeling_mamba
from transformers.models.mamba2 import modeling_mamba2

LENGTHS = [1, 7, 33, 100]


@pytest.fixture(scope="module")
def mamba_mixer():
    torch.manual_seed(0)
    config = MambaConfig(
        hidden_size=16,
        intermediate_size=32,
        state_size=8,
        time_step_rank=4,
        conv_kernel=4,
        num_hidden_layers=1,
        use_conv_bias=True,
        use_bias=False,
    )
    mixer = modeling_mamba.MambaMixer(config, layer_idx=0).eval()
    perturb_(mixer, torch.Generator().manual_seed(1))
    return mixer


@pytest.fixture(scope="module")
def mamba2_mixer():
    torch.manual_seed(0)
    config = Mamba2Config(
        hidden_size=16,
        expand=2,
        num_heads=8,
        head_dim=4,
        n_groups=2,
        state_size=8,
        chunk_size=16,
        conv_kernel=4,
        num_hidden_layers=1,
        use_conv_bias=True,
        use_bias=False,
    )
    mixer = modeling_mamba2.Mamba2Mixer(config, layer_idx=0).eval()
    perturb_(mixer, torch.Generator().manual_seed(2))
    return mixer


def _hidden(lengths, hidden_size, seed):
    return torch.randn(sum(lengths), hidden_size, generator=torch.Generator().manual_seed(seed))


def _hf_per_sequence(mixer, hidden, lengths):
    outputs, start = [], 0
    for length in lengths:
        outputs.append(mixer(hidden[None, start : start + length])[0])
        start += length
    return torch.cat(outputs)


def test_hf_uses_its_torch_path():
    """HF swaps its torch functions for these packages' CUDA kernels when they import."""
    for package in ("mamba_ssm", "causal_conv1d"):
        assert importlib.util.find_spec(package) is None, (
            f"{package} is installed: HF would not use its torch path"
        )


@torch.no_grad()
@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_mixer_packed_matches_hf_per_sequence(arch, mamba_mixer, mamba2_mixer):
    mixer, prefill, new_states = (
        (mamba_mixer, mamba_prefill, mamba_states)
        if arch == "mamba"
        else (mamba2_mixer, mamba2_prefill, mamba2_states)
    )
    hidden = _hidden(LENGTHS, mixer.hidden_size, seed=3)
    conv_states, ssm_states = new_states(mixer, len(LENGTHS))
    ours = prefill(mixer, hidden, cu_seqlens_of(LENGTHS), conv_states, ssm_states)
    assert_close(ours, _hf_per_sequence(mixer, hidden, LENGTHS), f"{arch} mixer packed vs HF")
    # The conv state is the last kernel_size - 1 conv inputs (zero-padded on the left).
    assert (
        torch.count_nonzero(conv_states[0, :-1]) == 0
        and torch.count_nonzero(conv_states[0, -1]) > 0
    )


@torch.no_grad()
@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("split", [1, 2, 40])
def test_mixer_chunked_prefill_and_decode_match_hf_full_forward(
    arch, split, mamba_mixer, mamba2_mixer
):
    """Prefill ``split`` tokens, then the rest in a second prefill call minus the last 3,
    then 3 decode steps; HF runs the whole 50-token sequence in one forward."""
    mixer, prefill, decode, new_states = (
        (mamba_mixer, mamba_prefill, mamba_decode, mamba_states)
        if arch == "mamba"
        else (mamba2_mixer, mamba2_prefill, mamba2_decode, mamba2_states)
    )
    total, num_decode = 50, 3
    hidden = _hidden([total], mixer.hidden_size, seed=4)
    expected = mixer(hidden[None])[0]

    conv_states, ssm_states = new_states(mixer, 1)
    first = prefill(mixer, hidden[:split], cu_seqlens_of([split]), conv_states, ssm_states)
    second = prefill(
        mixer,
        hidden[split : total - num_decode],
        cu_seqlens_of([total - num_decode - split]),
        conv_states,
        ssm_states,
        has_initial_state=torch.tensor([True]),
    )
    steps = [
        decode(mixer, hidden[t : t + 1], conv_states, ssm_states)
        for t in range(total - num_decode, total)
    ]
    assert_close(torch.cat([first, second, *steps]), expected, f"{arch} mixer chunked+decode vs HF")


@torch.no_grad()
def test_selective_scan_final_state_matches_hf():
    gen = torch.Generator().manual_seed(5)
    batch, length, dim, d_state = 3, 37, 12, 6
    u, delta, z = (torch.randn(batch, dim, length, generator=gen) for _ in range(3))
    B, C = (torch.randn(batch, d_state, length, generator=gen) for _ in range(2))
    A = -torch.exp(torch.randn(dim, d_state, generator=gen))
    D, delta_bias = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
    hf_y, hf_state = modeling_mamba.mamba_selective_scan(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=True,
        return_last_state=True,
    )

    def packed(t):  # (batch, features, length) -> (batch * length, features)
        return t.transpose(1, 2).reshape(batch * length, -1)

    states = torch.zeros(batch, dim, d_state)
    y = selective_scan_varlen(
        packed(u),
        packed(delta),
        A,
        packed(B),
        packed(C),
        D,
        packed(z),
        delta_bias,
        True,
        states,
        cu_seqlens_of([length] * batch),
    )
    assert_close(y, packed(hf_y), "selective_scan y vs HF mamba_selective_scan")
    assert_close(states, hf_state, "selective_scan final state vs HF")


@torch.no_grad()
def test_selective_state_update_matches_hf():
    gen = torch.Generator().manual_seed(6)
    num_seqs, dim, d_state = 4, 12, 6
    state = torch.randn(num_seqs, dim, d_state, generator=gen)
    x, dt, z = (torch.randn(num_seqs, dim, generator=gen) for _ in range(3))
    B, C = (torch.randn(num_seqs, d_state, generator=gen) for _ in range(2))
    A = -torch.exp(torch.randn(dim, d_state, generator=gen))
    D, dt_bias = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
    hf_state = state.clone()
    hf_y = modeling_mamba.mamba_selective_state_update(
        hf_state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True, z=z
    )
    y = selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True)
    assert_close(y, hf_y, "selective_state_update y vs HF")
    assert_close(state, hf_state, "selective_state_update state vs HF")


@torch.no_grad()
def test_causal_conv1d_update_matches_hf():
    """HF keeps kernel_size inputs per sequence, we keep kernel_size - 1 (its oldest one
    never reaches an output), transposed to token-major."""
    gen = torch.Generator().manual_seed(7)
    num_seqs, dim, kernel_size = 3, 10, 4
    hf_state = torch.randn(num_seqs, dim, kernel_size, generator=gen)
    x = torch.randn(num_seqs, dim, generator=gen)
    weight, bias = torch.randn(dim, kernel_size, generator=gen), torch.randn(dim, generator=gen)
    state = hf_state[:, :, 1:].transpose(1, 2).contiguous()
    hf_y = modeling_mamba.causal_conv1d_update(
        x[:, :, None], hf_state, weight, bias, activation="silu"
    )
    y = causal_conv1d_update(x, state, weight, bias, "silu")
    assert_close(y, hf_y[:, :, 0], "causal_conv1d_update y vs HF")
    assert_close(state, hf_state[:, :, 1:].transpose(1, 2), "causal_conv1d_update state vs HF")


@torch.no_grad()
@pytest.mark.parametrize("chunk_size", [8, 16])
def test_ssd_chunk_scan_matches_hf_with_initial_states(chunk_size):
    gen = torch.Generator().manual_seed(8)
    batch, length, heads, head_dim, groups, d_state = 3, 45, 6, 4, 3, 5
    x = torch.randn(batch, length, heads, head_dim, generator=gen)
    dt = torch.randn(batch, length, heads, generator=gen)
    B, C = (torch.randn(batch, length, groups, d_state, generator=gen) for _ in range(2))
    A = -torch.exp(torch.randn(heads, generator=gen))
    D, dt_bias = torch.randn(heads, generator=gen), torch.randn(heads, generator=gen)
    initial = torch.randn(batch, heads, head_dim, d_state, generator=gen)
    dt_limit = (0.05, 2.0)  # also exercise the clamp
    hf_y, hf_final = modeling_mamba2.mamba2_chunk_scan(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=D,
        dt_bias=dt_bias,
        initial_states=initial,
        dt_softplus=True,
        dt_limit=dt_limit,
        return_final_states=True,
    )

    def packed(t):
        return t.reshape(batch * length, *t.shape[2:])

    y, final = ssd_chunk_scan_varlen(
        packed(x),
        packed(dt),
        A,
        packed(B),
        packed(C),
        chunk_size,
        D=D,
        dt_bias=dt_bias,
        dt_softplus=True,
        initial_states=initial,
        cu_seqlens=cu_seqlens_of([length] * batch),
        has_initial_state=torch.ones(batch, dtype=torch.bool),
        dt_limit=dt_limit,
    )
    assert_close(y, packed(hf_y), "ssd_chunk_scan y vs HF mamba2_chunk_scan")
    assert_close(final, hf_final, "ssd_chunk_scan final state vs HF")


@torch.no_grad()
def test_ssd_state_update_matches_hf():
    """HF's decode function takes the general mamba_ssm form (dt, A, D per head *and*
    head_dim); Mamba2Mixer expands per-head values into it, as done here."""
    gen = torch.Generator().manual_seed(9)
    num_seqs, heads, head_dim, groups, d_state = 3, 6, 4, 2, 5
    state = torch.randn(num_seqs, heads, head_dim, d_state, generator=gen)
    x = torch.randn(num_seqs, heads, head_dim, generator=gen)
    dt = torch.randn(num_seqs, heads, generator=gen)
    B, C = (torch.randn(num_seqs, groups, d_state, generator=gen) for _ in range(2))
    A = -torch.exp(torch.randn(heads, generator=gen))
    D, dt_bias = torch.randn(heads, generator=gen), torch.randn(heads, generator=gen)
    hf_state = state.clone()
    hf_y = modeling_mamba2.mamba2_selective_state_update(
        hf_state,
        x,
        dt[:, :, None].expand(-1, -1, head_dim),
        A[:, None, None].expand(-1, head_dim, d_state),
        B,
        C,
        D[:, None].expand(-1, head_dim),
        dt_bias=dt_bias[:, None].expand(-1, head_dim),
        dt_softplus=True,
    )
    y = ssd_state_update(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
    assert_close(y, hf_y, "ssd_state_update y vs HF")
    assert_close(state, hf_state, "ssd_state_update state vs HF")
