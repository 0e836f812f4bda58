"""The CUDA platform: what NVIDIA GPUs add to the core's ``GpuPlatform``.

The core's ``GpuPlatform`` holds what every ``torch.cuda`` device shares (asynchronous
copies and events, memory-profiled KV sizing, the CUDA-graph runner, NCCL); this class adds
the NVIDIA specifics: availability (CUDA builds of torch, not HIP), the dtype policy, the
Triton kernels, the compute capability and the FP8 format.
"""

from __future__ import annotations

from typing import Optional

import torch

from llmserve.layers.ops import LayerOps
from llmserve.platforms.gpu import GpuPlatform


class CudaPlatform(GpuPlatform):
    name = "cuda"
    priority = 100
    default_attention_backend = "triton"
    device_visibility_env = "CUDA_VISIBLE_DEVICES"

    @classmethod
    def is_available(cls) -> bool:
        # A ROCm build of torch answers torch.cuda too; it belongs to the AMD platform.
        return torch.cuda.is_available() and torch.version.hip is None

    @classmethod
    def resolve_dtype(cls, checkpoint_dtype: torch.dtype) -> torch.dtype:
        # float32 checkpoints run in bfloat16 here: twice the speed, the range of float32.
        return torch.bfloat16 if checkpoint_dtype == torch.float32 else checkpoint_dtype

    @classmethod
    def device_capability(cls) -> Optional[tuple[int, int]]:
        return torch.cuda.get_device_capability()

    @classmethod
    def fp8_dtype(cls) -> Optional[torch.dtype]:
        return torch.float8_e4m3fn

    @classmethod
    def layer_ops(cls) -> LayerOps:
        from llmserve_triton.ops import layer_ops

        return layer_ops()
