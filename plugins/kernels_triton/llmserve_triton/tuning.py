"""``KernelTuning``: the launch configuration of every kernel here for one family of GPUs.

The kernels are portable; their best tile sizes, warp counts and compiler hints are not. A
hardware plugin picks the tuning for the device it found (``DEFAULT_TUNING`` for NVIDIA;
the AMD plugin has one per CDNA generation) and hands it to the wrappers through
``layer_ops(tuning)`` and its attention backend's ``kernel_tuning()``. Every wrapper and
every ``aot_specs`` takes the same object, so the compile tests build exactly what a
platform launches.

This module imports neither triton nor a device: platforms choose tunings on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class KernelTuning:
    """Launch parameters per kernel family. Thread counts are what the kernels are written
    for; ``warp_size`` turns them into ``num_warps`` (a wave64 GPU needs half the warps of a
    warp32 one for the same threads)."""

    name: str
    #: Threads per warp (wavefront): 32 on NVIDIA and RDNA, 64 on CDNA.
    warp_size: int = 32
    #: Key positions per tile in decode-like launches.
    decode_tile_n: int = 32
    #: Query rows per program in launches with a prefill chunk, for padded head sizes up to
    #: 128, and above.
    prefill_block_m: int = 64
    prefill_block_m_wide_head: int = 32
    #: Key positions per tile in launches with a prefill chunk, for padded head sizes up to
    #: 64, and above.
    prefill_tile_n_narrow_head: int = 64
    prefill_tile_n: int = 32
    #: ``num_warps`` of the attention kernel, and of its launches with 128 rows or more.
    attention_warps: int = 4
    attention_warps_tall: int = 8
    #: Software-pipelining depth of the attention kernel's key loop (None: the compiler's).
    attention_num_stages: Optional[int] = None
    #: The Triton backend ("cuda", "hip") that ``attention_options`` belong to.
    backend: Optional[str] = None
    #: Compiler options only ``backend`` knows (e.g. HIP's ``waves_per_eu``,
    #: ``matrix_instr_nonkdim``, ``kpack``), as (name, value) pairs.
    attention_options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.warp_size not in (32, 64):
            raise ValueError(f"warp_size must be 32 or 64, got {self.warp_size}")
        if self.attention_options and self.backend is None:
            raise ValueError("attention_options need the backend they belong to")

    def warps(self, threads: int) -> int:
        """``num_warps`` for a program of ``threads`` threads (at least one warp)."""
        return max(1, threads // self.warp_size)

    def attention_compile_options(self, backend: str) -> dict[str, Any]:
        """The attention kernels' options beyond ``num_warps`` when compiled for ``backend``:
        backend-specific ones only for their own backend, so this tuning also runs (minus
        those hints) where the platform's code path is forced onto another vendor's GPU."""
        options: dict[str, Any] = {}
        if self.attention_num_stages is not None:
            options["num_stages"] = self.attention_num_stages
        if backend == self.backend:
            options.update(self.attention_options)
        return options


#: The tuning the kernels were first written and measured with (H100, H200).
DEFAULT_TUNING = KernelTuning("default")


def launch_backend(device: torch.device) -> Optional[str]:
    """The Triton backend that compiles for ``device``: "hip" on a ROCm build of torch,
    "cuda" on a CUDA one, None elsewhere (the interpreter, which takes no compiler
    options)."""
    if device.type != "cuda":
        return None
    return "hip" if torch.version.hip else "cuda"
