"""Ahead-of-time compilation of the AMD plugin's kernel tunings: every shipped configuration
of CDNA3's for gfx942 and of CDNA4's for gfx950, fp16 and bf16 (fp32 where the default
tuning has it), with the HIP compiler hints the platform passes, without a GPU.

Beyond "it compiles", the hints are checked where they land: the launch metadata carries
them, the code object is wave64, ``waves_per_eu`` reaches the LLVM function attributes,
``matrix_instr_nonkdim`` picks the MFMA shape (16x16 here; 32 gives 32x32, so the hint is
really applied), and no tuned attention configuration spills vector registers to scratch.
"""

from __future__ import annotations

import re

import pytest
import torch
from aot import BINARY, compile_spec, kernel_specs
from llmserve_amd.arch import KNOWN_ARCHS
from llmserve_triton.kernels import attention
from triton.backends.compiler import GPUTarget

TARGETS = {name: GPUTarget("hip", name, 64) for name in ("gfx942", "gfx950")}
SPECS = [(arch, name, spec) for arch in TARGETS
         for name, spec in kernel_specs(KNOWN_ARCHS[arch].tuning)]


@pytest.mark.parametrize("arch,spec", [(a, s) for a, _, s in SPECS],
                         ids=[f"{a}-{n}" for a, n, _ in SPECS])
def test_compiles_with_the_arch_tuning(arch, spec):
    compiled = compile_spec(spec, TARGETS[arch])
    binary = compiled.asm[BINARY["hip"]]
    assert isinstance(binary, bytes) and len(binary) > 0
    assert compiled.metadata.num_warps == spec.num_warps
    for option, value in spec.options.items():
        assert getattr(compiled.metadata, option) == value, option
    asm = compiled.asm["amdgcn"]
    assert re.search(r"\.wavefront_size:\s*64", asm)
    if spec.kernel is attention.paged_attention_kernel:
        assert "waves_per_eu" in spec.options
        assert re.search(r'"amdgpu-waves-per-eu"="2,2"', compiled.asm["llir"])
        # Scratch spills (VGPRs) would cost memory traffic in the inner loop; SGPR spills go
        # to VGPR lanes and are not checked. waves_per_eu=2 leaves each wave 256 registers.
        counts = {k: int(v) for k, v in re.findall(
            r"\.(vgpr_spill_count|vgpr_count|agpr_count):\s*(\d+)", asm)}
        assert counts["vgpr_spill_count"] == 0, counts
        assert counts["vgpr_count"] + counts["agpr_count"] <= 256, counts


@pytest.mark.parametrize("arch", list(TARGETS))
def test_matrix_instr_nonkdim_picks_the_mfma_shape(arch):
    tuning = KNOWN_ARCHS[arch].tuning
    spec = next(s for s in attention.aot_specs(torch.bfloat16, tuning)
                if s.label == "h32-kvh8-d128-prefill-split1")
    assert spec.options["matrix_instr_nonkdim"] == 16
    shipped = set(re.findall(r"v_mfma_f32_(\d+x\d+)x\d+", compile_spec(
        spec, TARGETS[arch]).asm["amdgcn"]))
    other = set(re.findall(r"v_mfma_f32_(\d+x\d+)x\d+", compile_spec(
        spec, TARGETS[arch], matrix_instr_nonkdim=32).asm["amdgcn"]))
    assert shipped == {"16x16"} and other == {"32x32"}


def test_every_amd_spec_carries_the_tuned_tiles():
    labels = {(a, n) for a, n, _ in SPECS}
    assert {("gfx942", "attention-bfloat16-h32-kvh8-d128-prefill-split1"),
            ("gfx950", "attention-bfloat16-h32-kvh8-d128-decode-split8")} <= labels
    prefill = next(s for a, n, s in SPECS
                   if (a, n) == ("gfx942", "attention-bfloat16-h32-kvh8-d128-prefill-split1"))
    assert (prefill.constexprs["BLOCK_M"], prefill.constexprs["TILE_N"]) == (128, 64)
