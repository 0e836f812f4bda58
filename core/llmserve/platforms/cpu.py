"""The CPU platform: torch reference kernels, the correctness reference and what CI runs."""

from __future__ import annotations

import torch

from llmserve.platforms.base import Platform

#: KV cache bytes when the user gives no ``kv_cache_memory`` on the CPU. The cache is
#: zero-filled at start-up (about 1 s per GiB on a small machine), so the default stays modest.
DEFAULT_CPU_KV_CACHE_BYTES = 1024**3


class CpuPlatform(Platform):
    name = "cpu"
    device_type = "cpu"
    priority = 0
    default_attention_backend = "torch"
    # Everything else is the base's: no pinned memory (nothing to overlap with), events that
    # have always passed, gloo for distributed tests, no capability, no FP8.

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def resolve_dtype(cls, checkpoint_dtype: torch.dtype) -> torch.dtype:
        # Half-precision matmuls on the CPU are slow and less exact than the reference should
        # be, so "auto" runs half checkpoints in float32 here; ask for bfloat16 explicitly.
        return torch.float32

    @classmethod
    def kv_cache_budget_bytes(cls, requested: int | None, gpu_memory_utilization: float) -> int:
        return requested if requested is not None else DEFAULT_CPU_KV_CACHE_BYTES
