"""KV-cache sizing from measured device memory, shared by every GPU platform.

Pure arithmetic over numbers the platform reads from its runtime, so it is tested on the CPU
and reused unchanged by CUDA and ROCm (whose torch builds report memory the same way).
"""

from __future__ import annotations


def kv_budget_from_memory(total: int, free: int, torch_reserved: int, torch_peak: int,
                          gpu_memory_utilization: float) -> int:
    """Bytes for the KV cache: the engine's share of the card, less what the profiled step
    needed at its peak (weights + activations) and less what others hold outside torch (the
    device context, collective libraries, other processes)."""
    outside_torch = max(0, (total - free) - torch_reserved)
    budget = int(total * gpu_memory_utilization) - torch_peak - outside_torch
    if budget <= 0:
        raise ValueError(
            f"no memory left for the KV cache: {gpu_memory_utilization=:.2f} of "
            f"{total / 2**30:.1f} GiB, model and activations peak at {torch_peak / 2**30:.1f} "
            f"GiB, {outside_torch / 2**30:.1f} GiB used outside torch; raise "
            "gpu_memory_utilization or lower max_num_batched_tokens / max_model_len")
    return budget
