"""``RocmTritonAttention``: the Triton paged-attention backend, launched with the tuning of
the AMD architecture the platform found (the kernels are the portable ones)."""

from __future__ import annotations

from llmserve_triton.backend import TritonPagedAttention
from llmserve_triton.tuning import KernelTuning

from llmserve_amd.platform import RocmPlatform


class RocmTritonAttention(TritonPagedAttention):
    name = "triton_rocm"

    @classmethod
    def kernel_tuning(cls) -> KernelTuning:
        return RocmPlatform.kernel_tuning()
