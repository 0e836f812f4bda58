"""Where this process sits in the tensor-parallel group.

Parallel layers shard their weights by these numbers, so turning tensor parallelism on is a
matter of initialising a process group, not of rewriting models.
"""

from __future__ import annotations

import torch.distributed as dist


def get_tp_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_tp_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce(x):
    """Sum ``x`` over the tensor-parallel group (identity with one process)."""
    if get_tp_world_size() > 1:
        dist.all_reduce(x)
    return x


def all_gather_last_dim(x):
    """Concatenate each rank's slice of the last dimension (identity with one process)."""
    world = get_tp_world_size()
    if world == 1:
        return x
    import torch

    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)
