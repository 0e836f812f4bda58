"""The ROCm platform: what AMD GPUs add to the core's ``GpuPlatform``.

ROCm builds of torch drive AMD GPUs through the ``torch.cuda`` API (HIP underneath), so the
core's ``GpuPlatform`` already holds what this platform shares with NVIDIA's: asynchronous
copies and events, memory-profiled KV sizing, the graph runner (``torch.cuda.CUDAGraph``
records HIP graphs here), and the collective backend (``"nccl"``, which ROCm's torch maps
onto RCCL). This class adds the AMD specifics: availability (HIP builds of torch), the
architecture, and what follows from it: the dtype policy, the FP8 flavour and the kernels'
launch configuration.

``LLMSERVE_PLATFORM=rocm`` runs this code path on any ``torch.cuda`` GPU (see
``can_run_forced``); the architecture it then assumes is ``LLMSERVE_ROCM_ARCH``
(default gfx942), since the device has none.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from llmserve.layers.ops import LayerOps
from llmserve.platforms.gpu import GpuPlatform
from llmserve_triton.tuning import KernelTuning

from llmserve_amd.arch import GfxArch, gfx_arch, parse_gcn_arch

logger = logging.getLogger(__name__)

#: The gfx architecture the ROCm path assumes when forced onto a GPU that is not AMD's.
FORCED_ARCH_ENV = "LLMSERVE_ROCM_ARCH"
FORCED_ARCH_DEFAULT = "gfx942"


class RocmPlatform(GpuPlatform):
    name = "rocm"
    priority = 100
    default_attention_backend = "triton_rocm"
    device_visibility_env = "HIP_VISIBLE_DEVICES"

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and torch.version.hip is not None

    @classmethod
    def can_run_forced(cls) -> bool:
        # Every torch.cuda GPU runs this path: the API is the same, the kernels are Triton.
        return torch.cuda.is_available()

    @classmethod
    def arch(cls) -> GfxArch:
        """The current device's architecture, from its properties on a ROCm build; on any
        other GPU (the forced path) the one ``LLMSERVE_ROCM_ARCH`` names."""
        if torch.version.hip is None:
            forced = os.environ.get(FORCED_ARCH_ENV) or FORCED_ARCH_DEFAULT
            try:
                return gfx_arch(parse_gcn_arch(forced))
            except ValueError:
                raise ValueError(f"{FORCED_ARCH_ENV} must name a gfx architecture such as "
                                 f"'gfx942' or 'gfx950', got {forced!r}") from None
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return gfx_arch(parse_gcn_arch(props.gcnArchName),
                        warp_size=getattr(props, "warp_size", 64))

    @classmethod
    def resolve_dtype(cls, checkpoint_dtype: torch.dtype) -> torch.dtype:
        # float32 checkpoints run in a 16-bit type: bfloat16 where the matrix cores take it.
        if checkpoint_dtype != torch.float32:
            return checkpoint_dtype
        bf16 = cls.arch().bf16
        if bf16 is None:
            bf16 = torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16

    @classmethod
    def device_capability(cls) -> Optional[tuple[int, int]]:
        return torch.cuda.get_device_capability()

    @classmethod
    def fp8_dtype(cls) -> Optional[torch.dtype]:
        return cls.arch().fp8_dtype

    @classmethod
    def kernel_tuning(cls) -> KernelTuning:
        """Read by the attention backend once per step: a device-properties lookup (cached
        by torch) and a table lookup."""
        return cls.arch().tuning

    @classmethod
    def layer_ops(cls) -> LayerOps:
        from llmserve_triton.ops import layer_ops

        arch = cls.arch()
        if arch.family == "unknown":
            logger.warning("AMD architecture %s has no tuned kernel configuration; using %s",
                           arch.name, arch.tuning.name)
        return layer_ops(arch.tuning)
