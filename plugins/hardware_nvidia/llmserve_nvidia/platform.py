"""The CUDA platform: device choice, dtype policy, KV-cache sizing from measured memory."""

from __future__ import annotations

import torch

from llmserve.layers.ops import LayerOps
from llmserve.platforms import Platform


def kv_budget_from_memory(total: int, free: int, torch_reserved: int, torch_peak: int,
                          gpu_memory_utilization: float) -> int:
    """Bytes for the KV cache: the engine's share of the card, less what the profiled step
    needed at its peak (weights + activations) and less what others hold outside torch (CUDA
    context, NCCL, other processes)."""
    outside_torch = max(0, (total - free) - torch_reserved)
    budget = int(total * gpu_memory_utilization) - torch_peak - outside_torch
    if budget <= 0:
        raise ValueError(
            f"no memory left for the KV cache: {gpu_memory_utilization=:.2f} of "
            f"{total / 2**30:.1f} GiB, model and activations peak at {torch_peak / 2**30:.1f} "
            f"GiB, {outside_torch / 2**30:.1f} GiB used outside torch; raise "
            "gpu_memory_utilization or lower max_num_batched_tokens / max_model_len")
    return budget


class CudaPlatform(Platform):
    name = "cuda"
    device_type = "cuda"
    priority = 100
    default_attention_backend = "triton"
    needs_profile_run = True
    default_async_scheduling = True

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and torch.version.hip is None

    @classmethod
    def device(cls) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    @classmethod
    def resolve_dtype(cls, checkpoint_dtype: torch.dtype) -> torch.dtype:
        # float32 checkpoints run in bfloat16 here: twice the speed, the range of float32.
        return torch.bfloat16 if checkpoint_dtype == torch.float32 else checkpoint_dtype

    @classmethod
    def kv_cache_budget_bytes(cls, requested, gpu_memory_utilization) -> int:
        if requested is not None:
            return requested
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        return kv_budget_from_memory(total, free, torch.cuda.memory_reserved(),
                                     torch.cuda.max_memory_allocated(), gpu_memory_utilization)

    @classmethod
    def layer_ops(cls) -> LayerOps:
        from llmserve_triton.ops import rms_norm, rotary, silu_and_mul

        return LayerOps("triton", rms_norm, rotary, silu_and_mul)

    @classmethod
    def model_runner_class(cls) -> type:
        from llmserve_nvidia.graph_runner import CudaGraphModelRunner

        return CudaGraphModelRunner
