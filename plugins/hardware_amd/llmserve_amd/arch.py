"""What the platform needs to know about each AMD GPU architecture (``gfx`` target).

torch on ROCm reports the architecture as ``gcnArchName`` in the device properties, with
feature flags after a colon ("gfx942:sramecc+:xnack-"); the part before the colon names the
instruction set the kernels are compiled for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from llmserve_triton.tuning import KernelTuning

from llmserve_amd.tuning import CDNA3, CDNA4, generic_tuning


@dataclass(frozen=True)
class GfxArch:
    name: str
    #: "CDNA3", ...; "unknown" for an architecture this table does not list.
    family: str
    products: tuple[str, ...]
    #: The e4m3 FP8 format the matrix cores take: CDNA3 implements the "fnuz" variant
    #: (no negative zero, no infinities, bias 8), CDNA4 the OCP one NVIDIA uses.
    fp8_dtype: Optional[torch.dtype]
    #: Whether the matrix cores take bfloat16 (False: float32 checkpoints run in float16;
    #: None: not known here, ask torch).
    bf16: Optional[bool]
    tuning: KernelTuning


KNOWN_ARCHS: dict[str, GfxArch] = {a.name: a for a in (
    GfxArch("gfx942", "CDNA3", ("MI300X", "MI300A", "MI325X"), torch.float8_e4m3fnuz, True,
            CDNA3),
    GfxArch("gfx950", "CDNA4", ("MI350X", "MI355X"), torch.float8_e4m3fn, True, CDNA4),
)}


def parse_gcn_arch(gcn_arch_name: str) -> str:
    """"gfx942:sramecc+:xnack-" -> "gfx942"."""
    name = gcn_arch_name.split(":", 1)[0].strip()
    if not name.startswith("gfx"):
        raise ValueError(f"not an AMD gfx architecture name: {gcn_arch_name!r}")
    return name


def gfx_arch(name: str, warp_size: int = 64) -> GfxArch:
    """The table's entry for ``name``, or a conservative one (no FP8, the default tiles at
    the device's ``warp_size``, bfloat16 support unknown) for an architecture it does not
    list."""
    known = KNOWN_ARCHS.get(name)
    if known is not None:
        return known
    return GfxArch(name, "unknown", (), None, None, generic_tuning(warp_size))
