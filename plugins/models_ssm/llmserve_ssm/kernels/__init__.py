"""Triton kernels for the state-space layers, over the engine's state-slot tensors.

``TRITON_KERNELS`` is a ``llmserve_ssm.ops.slots.SlotKernels`` whose six functions have the
signatures and semantics of the torch reference set (``REFERENCE_KERNELS``): they read and
write the rows ``state_indices`` of the slot tensors in place and touch no other row.

One module per kernel family, each with its ``@triton.jit`` kernels, the torch wrappers that
launch them, the functions that pick launch parameters, and ``aot_specs(dtype)``: those
configurations as ``triton.compile`` inputs, for the ahead-of-time compile tests.

- ``conv1d``: the causal depthwise conv (prefill over token blocks, decode step).
- ``selective_scan``: Mamba1's scan (a per-channel-block recurrence over each sequence).
- ``ssd``: Mamba2's chunked SSD (four launches) and its decode step.

No wrapper reads a device tensor on the host (prefill ones neither: ``cu_seqlens`` is only
read by the kernels), so the decode functions can be captured in a CUDA graph. The
prefill wrappers therefore do not validate ``cu_seqlens`` values as the reference does.

Importing this package imports triton and defines the kernels: under the interpreter,
``TRITON_INTERPRET=1`` must be set before the first import.
"""

from __future__ import annotations

from llmserve_ssm.kernels.conv1d import conv1d_decode, conv1d_prefill
from llmserve_ssm.kernels.selective_scan import selective_scan_decode, selective_scan_prefill
from llmserve_ssm.kernels.ssd import ssd_decode, ssd_prefill
from llmserve_ssm.ops.slots import SlotKernels

TRITON_KERNELS = SlotKernels("triton", conv1d_prefill, conv1d_decode, selective_scan_prefill,
                             selective_scan_decode, ssd_prefill, ssd_decode)

__all__ = [
    "TRITON_KERNELS",
    "conv1d_decode",
    "conv1d_prefill",
    "selective_scan_decode",
    "selective_scan_prefill",
    "ssd_decode",
    "ssd_prefill",
]
