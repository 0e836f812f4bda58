"""Ahead-of-time compilation of every configuration the SSM plugin's Triton wrappers ship
(``llmserve_ssm.kernels``), for sm_80, sm_90, gfx942 and gfx950, without a GPU.

Runs in a process without ``TRITON_INTERPRET`` (see conftest). The configurations come from
each kernel module's ``aot_specs``, built by the same functions the wrappers use to pick
their launch parameters. fp16 and bf16 activations (each with states and parameters in the
activation dtype, and with fp32 states and parameters), and fp32 throughout: the states,
and models run in fp32, may be fp32.
"""

from __future__ import annotations

import pytest
import torch
import triton
from llmserve_ssm.kernels import conv1d, selective_scan, ssd
from llmserve_ssm.kernels.common import AotSpec
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGETS = {
    "sm80": GPUTarget("cuda", 80, 32),
    "sm90": GPUTarget("cuda", 90, 32),
    "gfx942": GPUTarget("hip", "gfx942", 64),
    "gfx950": GPUTarget("hip", "gfx950", 64),
}
BINARY = {"cuda": "cubin", "hip": "hsaco"}
MODULES = (conv1d, selective_scan, ssd)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _specs() -> list[tuple[str, AotSpec]]:
    out = []
    for dtype in DTYPES:
        for module in MODULES:
            out += [(f"ssm-{module.__name__.rsplit('.', 1)[1]}-{str(dtype)[6:]}-{s.label}", s)
                    for s in module.aot_specs(dtype)]
    return out


SPECS = _specs()


def compile_spec(spec: AotSpec, target: GPUTarget):
    src = ASTSource(fn=spec.kernel, signature=spec.signature(), constexprs=spec.constexprs)
    return triton.compile(src, target=target, options={"num_warps": spec.num_warps})


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=[n for n, _ in SPECS])
def test_ssm_kernel_compiles(spec, target):
    compiled = compile_spec(spec, TARGETS[target])
    binary = compiled.asm[BINARY[TARGETS[target].backend]]
    assert isinstance(binary, bytes) and len(binary) > 0
    assert compiled.metadata.num_warps == spec.num_warps


def test_ssm_spec_labels_are_unique():
    names = [n for n, _ in SPECS]
    assert len(names) == len(set(names))


def test_every_ssm_kernel_has_a_spec():
    """Every ``@triton.jit`` function of the kernel modules is either a launched kernel
    (named ``*_kernel``), which must have a spec for every activation dtype, or a device
    helper (named ``_*``), compiled into the kernels that call it."""
    jitted = {name for m in MODULES for name, obj in vars(m).items()
              if isinstance(obj, triton.runtime.jit.JITFunction)}
    kernels = {name for name in jitted if name.endswith("_kernel")}
    assert all(name.startswith("_") for name in jitted - kernels), jitted - kernels
    assert len(kernels) == 9  # conv1d 2, selective_scan 2, ssd 5
    for dtype in DTYPES:
        compiled = {s.kernel.__name__ for m in MODULES for s in m.aot_specs(dtype)}
        assert kernels <= compiled, (dtype, kernels - compiled)
