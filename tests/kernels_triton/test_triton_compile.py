"""Ahead-of-time compilation of every shipped kernel configuration of the default (NVIDIA)
tuning for sm_80 and sm_90, for fp16 and bf16 (fp32 for the attention kernel's IEEE-dot path
and for the token bitmask, whose logits are often fp32), without a GPU. The AMD tunings are
compiled for gfx942 and gfx950 in ``test_triton_compile_amd.py``.

Runs in a process without ``TRITON_INTERPRET`` (see conftest). The configurations come from
each kernel module's ``aot_specs``, built by the same functions the wrappers use to pick
their launch parameters, so a config the wrappers can launch is a config compiled here.
"""

from __future__ import annotations

import pytest
from aot import BINARY, MODULES, compile_spec, kernel_specs
from llmserve_triton.kernels import attention
from llmserve_triton.kernels.common import AotSpec
from triton.backends.compiler import GPUTarget
from triton.compiler.errors import CompilationError

TARGETS = {
    "sm80": GPUTarget("cuda", 80, 32),
    "sm90": GPUTarget("cuda", 90, 32),
}
SPECS = kernel_specs()


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
    compile_spec(bad, GPUTarget("hip", "gfx942", 64))
