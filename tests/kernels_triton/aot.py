"""What the ahead-of-time compile tests share: every shipped kernel configuration for one
``KernelTuning``, and how one is compiled for a target without a GPU."""

from __future__ import annotations

import torch
import triton
from llmserve_triton.kernels import activation, attention, cache, norm, rotary, token_bitmask
from llmserve_triton.kernels.common import AotSpec
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

MODULES = (attention, cache, norm, rotary, activation, token_bitmask)
BINARY = {"cuda": "cubin", "hip": "hsaco"}


def kernel_specs(tuning: KernelTuning = DEFAULT_TUNING) -> list[tuple[str, AotSpec]]:
    """(test id, spec) for every kernel in fp16 and bf16, the token bitmask in fp32 and the
    attention kernel's fp32 (IEEE dot) decode path, as ``tuning`` launches them."""
    out = []
    for dtype in (torch.float16, torch.bfloat16):
        for module in MODULES:
            out += [(f"{module.__name__.rsplit('.', 1)[1]}-{str(dtype)[6:]}-{s.label}", s)
                    for s in module.aot_specs(dtype, tuning)]
    out += [(f"token_bitmask-float32-{s.label}", s)
            for s in token_bitmask.aot_specs(torch.float32, tuning)]
    out += [(f"attention-float32-{s.label}", s)
            for s in attention.aot_specs(torch.float32, tuning)
            if "h32-" in s.label and "decode" in s.label]
    return out


def compile_spec(spec: AotSpec, target: GPUTarget, **overrides):
    src = ASTSource(fn=spec.kernel, signature=spec.signature(), constexprs=spec.constexprs)
    return triton.compile(src, target=target,
                          options={"num_warps": spec.num_warps, **spec.options, **overrides})
