"""Torch reference kernels for state-space models: exact, slow, and the semantics that
faster kernels are tested against. One concept per module:

- ``causal_conv1d``: the depthwise causal conv (prefill over a packed batch, decode step).
- ``selective_scan``: Mamba1's selective scan (prefill, decode step).
- ``ssd``: Mamba2's chunked state-space duality scan, its sequential oracle, decode step.

Every prefill kernel takes a packed batch: tokens concatenated, boundaries in
``cu_seqlens`` (see ``_varlen``). Layouts are token-major.
"""

from llmserve_ssm.ops.causal_conv1d import causal_conv1d_update, causal_conv1d_varlen
from llmserve_ssm.ops.selective_scan import selective_scan_varlen, selective_state_update
from llmserve_ssm.ops.ssd import ssd_chunk_scan_varlen, ssd_scan_sequential, ssd_state_update

__all__ = [
    "causal_conv1d_update",
    "causal_conv1d_varlen",
    "selective_scan_varlen",
    "selective_state_update",
    "ssd_chunk_scan_varlen",
    "ssd_scan_sequential",
    "ssd_state_update",
]
