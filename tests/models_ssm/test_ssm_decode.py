"""Decode: prefill n tokens, then k single-token updates, equals a prefill of n + k.

A batch of sequences with different n decodes together (one token per sequence per step),
as the engine will run it.
"""

from __future__ import annotations

import pytest
import torch
from llmserve_ssm.ops import causal_conv1d_update, selective_state_update, ssd_state_update
from ssm_inputs import PER_TOKEN, conv_inputs, run_conv, run_scan, run_ssd, scan_inputs, ssd_inputs
from ssm_testutil import assert_close, cu_seqlens_of

PREFILL = [1, 2, 9, 30]  # n per sequence
NUM_DECODE = 4  # k
HAS_INITIAL_STATE = torch.tensor([True, False, False, True])


def decode_conv(i, states, rows):
    return causal_conv1d_update(i["x"][rows], states, i["weight"], i["bias"], "silu")


def decode_scan(i, states, rows):
    return selective_state_update(
        states,
        i["u"][rows],
        i["delta"][rows],
        i["A"],
        i["B"][rows],
        i["C"][rows],
        i["D"],
        i["z"][rows],
        i["delta_bias"],
        True,
    )


def decode_ssd(i, states, rows):
    return ssd_state_update(
        states,
        i["x"][rows],
        i["dt"][rows],
        i["A"],
        i["B"][rows],
        i["C"][rows],
        D=i["D"],
        z=i["z"][rows],
        dt_bias=i["dt_bias"],
        dt_softplus=True,
    )


KERNELS = {
    "conv": (conv_inputs, run_conv, decode_conv),
    "selective_scan": (scan_inputs, run_scan, decode_scan),
    "ssd": (ssd_inputs, run_ssd, decode_ssd),
}


@torch.no_grad()
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_prefill_then_decode_equals_longer_prefill(kernel):
    make_inputs, prefill, decode = KERNELS[kernel]
    lengths = [n + NUM_DECODE for n in PREFILL]
    inputs = make_inputs(sum(lengths), len(lengths), seed=30)
    full_states = inputs["states"].clone()
    full_y = prefill(inputs, cu_seqlens_of(lengths), full_states, HAS_INITIAL_STATE)

    starts = cu_seqlens_of(lengths)[:-1]
    prefill_rows = torch.cat([torch.arange(s, s + n) for s, n in zip(starts.tolist(), PREFILL)])
    prefill_inputs = {
        k: (v[prefill_rows] if k in PER_TOKEN and v is not None else v) for k, v in inputs.items()
    }
    states = inputs["states"].clone()
    prefill_y = prefill(prefill_inputs, cu_seqlens_of(PREFILL), states, HAS_INITIAL_STATE)
    assert_close(prefill_y, full_y[prefill_rows], f"{kernel} prefill part")

    for step in range(NUM_DECODE):
        rows = starts + torch.tensor(PREFILL) + step  # each sequence's next token
        y = decode(inputs, states, rows)
        assert_close(y, full_y[rows], f"{kernel} decode step vs longer prefill: y")
    assert_close(states, full_states, f"{kernel} decode vs longer prefill: final state")
