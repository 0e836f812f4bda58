"""Bad input raises ValueError that names the offending argument."""

from __future__ import annotations

import pytest
import torch
from llmserve_ssm.ops import (
    causal_conv1d_update,
    causal_conv1d_varlen,
    selective_scan_varlen,
    selective_state_update,
    ssd_chunk_scan_varlen,
    ssd_state_update,
)
from ssm_inputs import conv_inputs, scan_inputs, ssd_inputs
from ssm_testutil import cu_seqlens_of

LENGTHS = [3, 5]


def _conv(**overrides):
    i = conv_inputs(sum(LENGTHS), len(LENGTHS), seed=40)
    args = {
        "x": i["x"],
        "weight": i["weight"],
        "bias": i["bias"],
        "conv_states": i["states"],
        "cu_seqlens": cu_seqlens_of(LENGTHS),
        "has_initial_state": None,
        "activation": "silu",
    }
    return causal_conv1d_varlen(**(args | overrides))


@pytest.mark.parametrize(
    "overrides,name",
    [
        ({"cu_seqlens": torch.tensor([0, 5, 3])}, "strictly increasing"),
        ({"cu_seqlens": torch.tensor([0, 3, 3, 8])}, "strictly increasing"),
        ({"cu_seqlens": torch.tensor([1, 3, 8])}, "cu_seqlens must start at 0"),
        ({"cu_seqlens": torch.tensor([0, 3, 7])}, "cu_seqlens must end"),
        ({"cu_seqlens": torch.tensor([0.0, 3.0, 8.0])}, "cu_seqlens must have an integer dtype"),
        ({"x": torch.zeros(8, 6, 1)}, "^x must"),
        ({"weight": torch.zeros(5, 4)}, "^weight"),
        ({"bias": torch.zeros(7)}, "^bias"),
        ({"conv_states": torch.zeros(2, 4, 6)}, "^conv_states"),
        ({"conv_states": torch.zeros(3, 3, 6)}, "^conv_states"),
        ({"has_initial_state": torch.tensor([True])}, "^has_initial_state"),
        ({"activation": "relu"}, "^activation"),
    ],
)
def test_conv_varlen_rejects(overrides, name):
    with pytest.raises(ValueError, match=name):
        _conv(**overrides)


def test_conv_update_rejects_state_shape():
    i = conv_inputs(2, 2, seed=41)
    with pytest.raises(ValueError, match="^conv_state must have shape \\(2, 3, 6\\)"):
        causal_conv1d_update(i["x"], torch.zeros(2, 4, 6), i["weight"], i["bias"])


def _scan(**overrides):
    i = scan_inputs(sum(LENGTHS), len(LENGTHS), seed=42)
    args = {
        "u": i["u"],
        "delta": i["delta"],
        "A": i["A"],
        "B": i["B"],
        "C": i["C"],
        "D": i["D"],
        "z": i["z"],
        "delta_bias": i["delta_bias"],
        "delta_softplus": True,
        "ssm_states": i["states"],
        "cu_seqlens": cu_seqlens_of(LENGTHS),
        "has_initial_state": None,
    }
    return selective_scan_varlen(**(args | overrides))


@pytest.mark.parametrize(
    "overrides,name",
    [
        ({"delta": torch.zeros(8, 5)}, "^delta must"),
        ({"A": torch.zeros(5, 4)}, "^A must"),
        ({"B": torch.zeros(8, 3)}, "^B must"),
        ({"C": torch.zeros(7, 4)}, "^C must"),
        ({"D": torch.zeros(5)}, "^D must"),
        ({"z": torch.zeros(8, 5)}, "^z must"),
        ({"delta_bias": torch.zeros(1)}, "^delta_bias must"),
        ({"ssm_states": torch.zeros(2, 6, 5)}, "^ssm_states must"),
        ({"cu_seqlens": torch.tensor([0, 8, 8])}, "strictly increasing"),
    ],
)
def test_selective_scan_rejects(overrides, name):
    with pytest.raises(ValueError, match=name):
        _scan(**overrides)


def test_selective_state_update_rejects_state_shape():
    i = scan_inputs(2, 2, seed=43)
    with pytest.raises(ValueError, match="^state must"):
        selective_state_update(torch.zeros(2, 6, 5), i["u"], i["delta"], i["A"], i["B"], i["C"])


def _ssd(**overrides):
    i = ssd_inputs(sum(LENGTHS), len(LENGTHS), seed=44)
    args = {
        "x": i["x"],
        "dt": i["dt"],
        "A": i["A"],
        "B": i["B"],
        "C": i["C"],
        "chunk_size": 4,
        "D": i["D"],
        "z": i["z"],
        "dt_bias": i["dt_bias"],
        "dt_softplus": True,
        "initial_states": i["states"],
        "cu_seqlens": cu_seqlens_of(LENGTHS),
        "has_initial_state": None,
    }
    return ssd_chunk_scan_varlen(**(args | overrides))


@pytest.mark.parametrize(
    "overrides,name",
    [
        ({"dt": torch.zeros(8, 3)}, "^dt must"),
        ({"A": torch.zeros(4, 1)}, "^A must"),
        (
            {"B": torch.zeros(8, 3, 5), "C": torch.zeros(8, 3, 5)},
            "n_groups .* must divide num_heads",
        ),
        ({"C": torch.zeros(8, 2, 4)}, "^C must"),
        ({"D": torch.zeros(4, 2)}, "^D must"),
        ({"z": torch.zeros(8, 4, 2)}, "^z must"),
        ({"dt_bias": torch.zeros(2)}, "^dt_bias must"),
        ({"initial_states": torch.zeros(2, 4, 3, 4)}, "^initial_states must"),
        (
            {"initial_states": None, "has_initial_state": torch.tensor([True, False])},
            "initial_states is None",
        ),
        ({"chunk_size": 0}, "^chunk_size"),
        ({"cu_seqlens": torch.tensor([[0, 3, 8]])}, "^cu_seqlens must be a 1-D"),
    ],
)
def test_ssd_chunk_scan_rejects(overrides, name):
    with pytest.raises(ValueError, match=name):
        _ssd(**overrides)


def test_ssd_state_update_rejects_state_shape():
    i = ssd_inputs(2, 2, seed=45)
    with pytest.raises(ValueError, match="^state must"):
        ssd_state_update(torch.zeros(2, 4, 3, 4), i["x"], i["dt"], i["A"], i["B"], i["C"])
