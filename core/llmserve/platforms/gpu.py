"""What GPUs driven through ``torch.cuda`` share: NVIDIA CUDA and AMD ROCm builds of torch.

Both expose the same ``torch.cuda`` API (streams, events, graphs, memory statistics), so the
asynchronous copies, the memory-profiled KV sizing and the CUDA-graph runner live here once;
a vendor platform adds what differs (availability, dtype policy, kernels, capability, FP8).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from llmserve.platforms.base import DeviceEvent, Platform
from llmserve.platforms.memory import kv_budget_from_memory


class GpuPlatform(Platform):
    """Base for ``torch.cuda`` platforms; abstract (``is_available`` is the vendor's)."""

    device_type: ClassVar[str] = "cuda"
    needs_profile_run: ClassVar[bool] = True
    default_async_scheduling: ClassVar[bool] = True
    can_pin_memory: ClassVar[bool] = True
    #: NCCL on NVIDIA; ROCm builds of torch map the same name onto RCCL.
    distributed_backend: ClassVar[str] = "nccl"

    @classmethod
    def device(cls) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    @classmethod
    def select_device(cls, index: int) -> None:
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise ValueError(f"device index must be in [0, {count - 1}] (the GPUs this process "
                             f"sees), got {index}: tensor_parallel_size x "
                             f"pipeline_parallel_size x data_parallel_size needs that many")
        torch.cuda.set_device(index)

    @classmethod
    def synchronize(cls) -> None:
        torch.cuda.synchronize()

    @classmethod
    def record_event(cls) -> DeviceEvent:
        event = torch.cuda.Event()
        event.record()
        return event

    @classmethod
    def reset_peak_memory(cls) -> None:
        """Start the peak that ``kv_cache_budget_bytes`` reads from now: from this engine's
        weights, not from whatever an earlier engine in this process once allocated."""
        torch.cuda.reset_peak_memory_stats()

    @classmethod
    def kv_cache_budget_bytes(cls, requested: int | None, gpu_memory_utilization: float) -> int:
        if requested is not None:
            return requested
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        return kv_budget_from_memory(total, free, torch.cuda.memory_reserved(),
                                     torch.cuda.max_memory_allocated(), gpu_memory_utilization)

    @classmethod
    def model_runner_class(cls) -> type:
        from llmserve.runner.graph_runner import GraphModelRunner

        return GraphModelRunner
