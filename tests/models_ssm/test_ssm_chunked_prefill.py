"""Chunked prefill, and the chunked SSD against its sequential oracle.

Splitting every sequence of a batch into two prefill calls (the second resuming from the
first's final states) must equal one call; split points include 1 and 2 tokens, fewer than
the conv window of 3 earlier inputs. For SSD the chunk size must not matter, and the
chunked algorithm must equal the token-by-token recurrence.
"""

from __future__ import annotations

import math

import pytest
import torch
from llmserve_ssm.ops import ssd_chunk_scan_varlen, ssd_scan_sequential
from ssm_inputs import (
    PER_TOKEN,
    conv_inputs,
    run_conv,
    run_scan,
    run_ssd,
    scan_inputs,
    ssd_inputs,
)
from ssm_testutil import assert_close, cu_seqlens_of

LENGTHS = [3, 9, 40, 100]
SPLITS = [1, 2, 17, 64]  # tokens of each sequence in the first call
HAS_INITIAL_STATE = torch.tensor([False, True, True, False])

KERNELS = {
    "conv": (conv_inputs, run_conv),
    "selective_scan": (scan_inputs, run_scan),
    "ssd_chunked": (ssd_inputs, run_ssd),
}


def _gather(inputs: dict, ranges: list[tuple[int, int]]) -> dict:
    """The per-token tensors of ``inputs`` restricted to ``ranges``, packed in order."""
    gathered = dict(inputs)
    for name in PER_TOKEN:
        if inputs.get(name) is not None:
            gathered[name] = torch.cat([inputs[name][start:end] for start, end in ranges])
    return gathered


@torch.no_grad()
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_two_prefill_calls_equal_one(kernel):
    make_inputs, run = KERNELS[kernel]
    inputs = make_inputs(sum(LENGTHS), len(LENGTHS), seed=20)
    whole_states = inputs["states"].clone()
    whole_y = run(inputs, cu_seqlens_of(LENGTHS), whole_states, HAS_INITIAL_STATE)

    starts = cu_seqlens_of(LENGTHS)[:-1].tolist()
    first = _gather(inputs, [(s, s + k) for s, k in zip(starts, SPLITS)])
    second = _gather(inputs, [(s + k, s + n) for s, k, n in zip(starts, SPLITS, LENGTHS)])
    states = inputs["states"].clone()
    first_y = run(first, cu_seqlens_of(SPLITS), states, HAS_INITIAL_STATE)
    rest = [n - k for n, k in zip(LENGTHS, SPLITS)]
    second_y = run(second, cu_seqlens_of(rest), states, torch.ones(len(LENGTHS), dtype=torch.bool))

    for seq, (start, split, length) in enumerate(zip(starts, SPLITS, LENGTHS)):
        first_start = sum(SPLITS[:seq])
        second_start = sum(rest[:seq])
        joined = torch.cat(
            [
                first_y[first_start : first_start + split],
                second_y[second_start : second_start + length - split],
            ]
        )
        assert_close(joined, whole_y[start : start + length], f"{kernel} two calls vs one: y")
    assert_close(states, whole_states, f"{kernel} two calls vs one: final state")


@torch.no_grad()
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64, 256])
def test_ssd_chunk_size_does_not_matter(chunk_size):
    lengths = [1, 7, 33, 100]
    inputs = ssd_inputs(sum(lengths), len(lengths), seed=21)
    has_state = torch.tensor([True, False, True, True])
    reference_states, states = inputs["states"].clone(), inputs["states"].clone()
    reference = run_ssd(inputs, cu_seqlens_of(lengths), reference_states, has_state, chunk_size=16)
    y = run_ssd(inputs, cu_seqlens_of(lengths), states, has_state, chunk_size=chunk_size)
    assert_close(y, reference, "ssd chunk size vs 16: y")
    assert_close(states, reference_states, "ssd chunk size vs 16: final state")


@torch.no_grad()
@pytest.mark.parametrize(
    "num_heads,n_groups,D_per_channel,with_z,dt_limit",
    [
        (4, 1, False, True, (0.0, math.inf)),
        (4, 2, True, False, (0.0, math.inf)),
        (6, 6, False, True, (0.1, 1.5)),
        (8, 4, True, True, (0.0, 0.5)),
    ],
)
def test_ssd_chunked_equals_sequential_oracle(num_heads, n_groups, D_per_channel, with_z, dt_limit):
    lengths = [1, 7, 33, 100]
    i = ssd_inputs(
        sum(lengths),
        len(lengths),
        seed=22,
        num_heads=num_heads,
        n_groups=n_groups,
        D_per_channel=D_per_channel,
        with_z=with_z,
    )
    kwargs = {
        "D": i["D"],
        "z": i["z"],
        "dt_bias": i["dt_bias"],
        "dt_softplus": True,
        "initial_states": i["states"],
        "cu_seqlens": cu_seqlens_of(lengths),
        "has_initial_state": torch.tensor([True, True, False, True]),
        "dt_limit": dt_limit,
    }
    oracle_y, oracle_states = ssd_scan_sequential(i["x"], i["dt"], i["A"], i["B"], i["C"], **kwargs)
    y, states = ssd_chunk_scan_varlen(i["x"], i["dt"], i["A"], i["B"], i["C"], 16, **kwargs)
    assert_close(y, oracle_y, "ssd chunked vs sequential: y")
    assert_close(states, oracle_states, "ssd chunked vs sequential: final state")


@torch.no_grad()
def test_ssd_oracle_by_hand():
    """One head, head_dim 1, d_state 1, no bias or softplus:
    h = exp(dt A) h + dt x B, y = C h + D x."""
    x = torch.tensor([1.0, 2.0, -1.0]).reshape(3, 1, 1)
    dt = torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1)
    A = torch.tensor([-math.log(2.0)])  # exp(dt A) = 2 ** -dt
    B = torch.tensor([2.0, 1.0, 3.0]).reshape(3, 1, 1)
    C = torch.tensor([1.0, -1.0, 0.5]).reshape(3, 1, 1)
    D = torch.tensor([10.0])
    h, expected = 0.0, []
    for t in range(3):
        h = 2 ** -dt[t, 0].item() * h + dt[t, 0].item() * x[t, 0, 0].item() * B[t, 0, 0].item()
        expected.append(C[t, 0, 0].item() * h + 10.0 * x[t, 0, 0].item())
    for scan in (ssd_scan_sequential, lambda *a, **k: ssd_chunk_scan_varlen(*a, chunk_size=2, **k)):
        y, final = scan(x, dt, A, B, C, D=D)
        assert_close(y.flatten(), torch.tensor(expected), "ssd by hand: y", atol=1e-6)
        assert abs(final.item() - h) < 1e-6
