"""Launch configurations of the portable Triton kernels for AMD CDNA GPUs.

What differs from the NVIDIA defaults, and why:

- Wave64: a CDNA wavefront has 64 lanes, so the element-wise kernels get the same threads
  from half the warps (``warp_size=64``).
- Attention tiles: CDNA's matrix cores (MFMA) take 16- or 32-wide operands and a compute
  unit keeps several waves resident, so tiles are taller and wider than on NVIDIA: 128
  query rows per program in prefill (64 for head sizes above 128) and 64 keys per tile in
  decode and prefill. Programs of 128 rows run 8 waves, others 4: with 4 waves the
  128-row prefill program needed more than the 256 registers per wave that
  ``waves_per_eu=2`` allows and spilled to scratch on gfx942 (the compile test checks every
  attention configuration for spills).
- One pipeline stage: the key loop is not software-pipelined (``num_stages=1``); CDNA3 has
  64 KiB of LDS per compute unit, which double-buffered K/V tiles of these sizes would
  crowd.
- HIP compiler hints: ``waves_per_eu=2`` asks the register allocator to leave room for two
  waves per SIMD, ``matrix_instr_nonkdim=16`` picks the 16x16 MFMA instructions (the tiles
  here are multiples of 16, not always of 32), and ``kpack=2`` packs two K elements per
  LDS read on gfx942. gfx950 (CDNA4) takes the same configuration with ``kpack=1``: Triton
  deprecates ``kpack=2`` there.

These choices follow CDNA's documented properties and Triton's published AMD guidance; they
were compiled for gfx942 and gfx950 but never measured on AMD silicon (none was lent).
"""

from __future__ import annotations

from dataclasses import replace

from llmserve_triton.tuning import KernelTuning

_HIP_HINTS = (("waves_per_eu", 2), ("matrix_instr_nonkdim", 16))

CDNA3 = KernelTuning(
    "cdna3", warp_size=64, decode_tile_n=64, prefill_block_m=128, prefill_block_m_wide_head=64,
    prefill_tile_n_narrow_head=64, prefill_tile_n=64, attention_warps=4,
    attention_warps_tall=8, attention_num_stages=1, backend="hip",
    attention_options=_HIP_HINTS + (("kpack", 2),))

CDNA4 = replace(CDNA3, name="cdna4", attention_options=_HIP_HINTS + (("kpack", 1),))


def generic_tuning(warp_size: int) -> KernelTuning:
    """For an AMD GPU without a tuning of its own: the default tiles, the device's wave
    size, no compiler hints."""
    return KernelTuning(f"generic-wave{warp_size}", warp_size=warp_size)
