"""Ahead-of-time compilation of every shipped kernel configuration for sm_80, sm_90, gfx942
and gfx950, for fp16 and bf16 (fp32 for the attention kernel's IEEE-dot path and for the
token bitmask, whose logits are often fp32), without a GPU.

Runs in a process without ``TRITON_INTERPRET`` (see conftest). The configurations come from
each kernel module's ``aot_specs``, built by the same functions the wrappers use to pick
their launch parameters, so a config the wrappers can launch is a config compiled here.
"""

from __future__ import annotations

import pytest
import torch
import triton
from llmserve_triton.kernels import activation, attention, cache, norm, rotary, token_bitmask
from llmserve_triton.kernels.common import AotSpec
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.errors import CompilationError

TARGETS = {
    "sm80": GPUTarget("cuda", 80, 32),
    "sm90": GPUTarget("cuda", 90, 32),
    "gfx942": GPUTarget("hip", "gfx942", 64),
    "gfx950": GPUTarget("hip", "gfx950", 64),
}
BINARY = {"cuda": "cubin", "hip": "hsaco"}
MODULES = (attention, cache, norm, rotary, activation, token_bitmask)


def _specs() -> list[tuple[str, AotSpec]]:
    out = []
    for dtype in (torch.float16, torch.bfloat16):
        for module in MODULES:
            out += [(f"{module.__name__.rsplit('.', 1)[1]}-{str(dtype)[6:]}-{s.label}", s)
                    for s in module.aot_specs(dtype)]
    out += [(f"token_bitmask-float32-{s.label}", s) for s in token_bitmask.aot_specs(torch.float32)]
    out += [(f"attention-float32-{s.label}", s) for s in attention.aot_specs(torch.float32)
            if "h32-" in s.label and "decode" in s.label]
    return out


SPECS = _specs()


def compile_spec(spec: AotSpec, target: GPUTarget):
    src = ASTSource(fn=spec.kernel, signature=spec.signature(), constexprs=spec.constexprs)
    return triton.compile(src, target=target, options={"num_warps": spec.num_warps})


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=[n for n, _ in SPECS])
def test_compiles(spec, target):
    compiled = compile_spec(spec, TARGETS[target])
    binary = compiled.asm[BINARY[TARGETS[target].backend]]
    assert isinstance(binary, bytes) and len(binary) > 0
    assert compiled.metadata.num_warps == spec.num_warps


def test_every_kernel_has_a_spec():
    compiled = {s.kernel.__name__ for _, s in SPECS}
    kernels = {name for m in MODULES for name, obj in vars(m).items()
               if name.endswith("_kernel") and hasattr(obj, "arg_names")}
    assert kernels and kernels <= compiled


def test_harness_catches_dot_with_k_below_16_on_nvidia():
    # An unpadded head size of 8 makes Q @ K^T a dot with K = 8: NVIDIA rejects it, AMD not.
    good = next(s for _, s in SPECS if s.kernel is attention.paged_attention_kernel)
    bad = AotSpec(good.kernel, good.arg_types,
                  dict(good.constexprs, HEAD_DIM=8, HEAD_DIM_P=8), good.num_warps)
    with pytest.raises(CompilationError, match="K >= 16"):
        compile_spec(bad, TARGETS["sm90"])
    compile_spec(bad, TARGETS["gfx942"])
