"""Packed batches: each sequence of a packed batch gets exactly what it gets alone.

Lengths [1, 7, 33, 100] cover a sequence shorter than the conv window, one shorter than a
chunk, and several chunks; half the sequences start from a random saved state.
"""

from __future__ import annotations

import pytest
import torch
from llmserve_ssm.ops import causal_conv1d_varlen
from ssm_inputs import (
    conv_inputs,
    run_conv,
    run_scan,
    run_ssd,
    scan_inputs,
    slice_tokens,
    ssd_inputs,
)
from ssm_testutil import assert_close, cu_seqlens_of

LENGTHS = [1, 7, 33, 100]
HAS_INITIAL_STATE = torch.tensor([True, False, True, False])

KERNELS = {
    "conv": (conv_inputs, run_conv),
    "selective_scan": (scan_inputs, run_scan),
    "ssd_chunked": (ssd_inputs, run_ssd),
    "ssd_sequential": (ssd_inputs, lambda *a: run_ssd(*a, sequential=True)),
}


@torch.no_grad()
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_packed_batch_equals_each_sequence_alone(kernel):
    make_inputs, run = KERNELS[kernel]
    inputs = make_inputs(sum(LENGTHS), len(LENGTHS), seed=10)
    states = inputs["states"].clone()
    y = run(inputs, cu_seqlens_of(LENGTHS), states, HAS_INITIAL_STATE)

    start = 0
    for seq, length in enumerate(LENGTHS):
        alone_states = inputs["states"][seq : seq + 1].clone()
        alone_y = run(
            slice_tokens(inputs, start, start + length),
            cu_seqlens_of([length]),
            alone_states,
            HAS_INITIAL_STATE[seq : seq + 1],
        )
        assert_close(y[start : start + length], alone_y, f"{kernel} varlen y vs alone")
        assert_close(states[seq : seq + 1], alone_states, f"{kernel} varlen final state vs alone")
        start += length


@torch.no_grad()
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_without_initial_state_the_saved_state_is_ignored(kernel):
    make_inputs, run = KERNELS[kernel]
    inputs = make_inputs(sum(LENGTHS), len(LENGTHS), seed=11)
    no_state = torch.zeros(len(LENGTHS), dtype=torch.bool)
    random_states, zero_states = inputs["states"].clone(), torch.zeros_like(inputs["states"])
    y_random = run(inputs, cu_seqlens_of(LENGTHS), random_states, no_state)
    y_zero = run(inputs, cu_seqlens_of(LENGTHS), zero_states, None)
    assert_close(y_random, y_zero, f"{kernel} has_initial_state=False vs zero state", atol=0.0)
    assert_close(random_states, zero_states, f"{kernel} final state, no initial state", atol=0.0)
    # ... and that a saved state, when used, changes the output.
    y_with = run(inputs, cu_seqlens_of(LENGTHS), inputs["states"].clone(), HAS_INITIAL_STATE)
    assert (y_with[:1] - y_zero[:1]).abs().max() > 1e-2


@torch.no_grad()
def test_conv_by_hand():
    """kernel_size 3, one channel: y[t] = w0 x[t-2] + w1 x[t-1] + w2 x[t] + b, no activation."""
    x = torch.tensor([[1.0], [2.0], [3.0], [10.0], [20.0]])  # sequences [1, 2, 3] and [10, 20]
    weight, bias = torch.tensor([[100.0, 10.0, 1.0]]), torch.tensor([0.5])
    states = torch.tensor([[[0.0], [0.0]], [[7.0], [8.0]]])  # seq 1 starts after inputs 7, 8
    y = causal_conv1d_varlen(
        x, weight, bias, states, cu_seqlens_of([3, 2]), torch.tensor([False, True]), activation=None
    )
    expected = torch.tensor(
        [[1.5], [12.5], [123.5], [100 * 7 + 10 * 8 + 10 + 0.5], [100 * 8 + 10 * 10 + 20 + 0.5]]
    )
    assert torch.equal(y, expected)
    assert torch.equal(states, torch.tensor([[[2.0], [3.0]], [[10.0], [20.0]]]))
