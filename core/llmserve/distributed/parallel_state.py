"""Where this process sits among the ranks of one engine: its tensor- and pipeline-parallel
groups.

Parallel layers shard their weights by these numbers and models split their decoder layers
by them, so turning parallelism on is a matter of initialising the groups
(``init_parallel_groups``), not of rewriting models. Without it every size is 1 and every
collective is the identity.

Ranks are laid out tensor-parallel first: global rank ``pp_rank * tp_size + tp_rank``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelGroups:
    """The process groups of one rank."""

    tp_size: int
    pp_size: int
    rank: int
    #: This rank's tensor-parallel group (the ranks of its stage).
    tp_group: object
    #: This rank's pipeline group (the ranks at its tensor-parallel position, one per stage).
    pp_group: object

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp_size

    def pp_peer(self, stage: int) -> int:
        """The global rank at this rank's tensor-parallel position in ``stage``."""
        return stage * self.tp_size + self.tp_rank


_GROUPS: Optional[ParallelGroups] = None


def init_parallel_groups(tp_size: int, pp_size: int, rank: int, backend: str,
                         init_method: str, timeout_s: float = 600.0) -> ParallelGroups:
    """Join the engine's ``tp_size * pp_size`` ranks (``init_method`` e.g.
    ``tcp://127.0.0.1:PORT``) and build the tensor- and pipeline-parallel groups."""
    global _GROUPS
    world = tp_size * pp_size
    dist.init_process_group(backend, init_method=init_method, world_size=world, rank=rank,
                            timeout=timedelta(seconds=timeout_s))
    tp_group = pp_group = None
    # Every rank creates every group, in the same order, as torch.distributed requires.
    for stage in range(pp_size):
        ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
        group = dist.new_group(ranks) if tp_size > 1 else None
        if rank in ranks:
            tp_group = group
    for position in range(tp_size):
        ranks = list(range(position, world, tp_size))
        group = dist.new_group(ranks) if pp_size > 1 else None
        if rank in ranks:
            pp_group = group
    _GROUPS = ParallelGroups(tp_size, pp_size, rank, tp_group, pp_group)
    return _GROUPS


def destroy_parallel_groups() -> None:
    global _GROUPS
    _GROUPS = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def parallel_groups() -> Optional[ParallelGroups]:
    return _GROUPS


def get_tp_world_size() -> int:
    return _GROUPS.tp_size if _GROUPS is not None else 1


def get_tp_rank() -> int:
    return _GROUPS.tp_rank if _GROUPS is not None else 0


def get_pp_world_size() -> int:
    return _GROUPS.pp_size if _GROUPS is not None else 1


def get_pp_rank() -> int:
    return _GROUPS.pp_rank if _GROUPS is not None else 0


def pp_layer_range(num_layers: int) -> tuple[int, int]:
    """The decoder layers ``[start, end)`` of this rank's pipeline stage: contiguous and as
    even as possible, earlier stages taking the remainder."""
    size, stage = get_pp_world_size(), get_pp_rank()
    if num_layers < size:
        raise ValueError(f"pipeline_parallel_size must be in [1, {num_layers}] (the model's "
                         f"num_hidden_layers), got {size}")
    base, extra = divmod(num_layers, size)
    start = stage * base + min(stage, extra)
    return start, start + base + (1 if stage < extra else 0)


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the tensor-parallel group, in place (identity with one rank)."""
    if get_tp_world_size() > 1:
        dist.all_reduce(x, group=_GROUPS.tp_group)
    return x


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate each tensor-parallel rank's slice of the last dimension."""
    world = get_tp_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=_GROUPS.tp_group)
    return torch.cat(parts, dim=-1)


def pp_recv(like: torch.Tensor) -> torch.Tensor:
    """Receive a tensor shaped like ``like`` from the previous pipeline stage."""
    groups = _GROUPS
    out = torch.empty_like(like)
    dist.recv(out, src=groups.pp_peer(groups.pp_rank - 1), group=groups.pp_group)
    return out


def pp_send(x: torch.Tensor) -> None:
    """Send ``x`` to the next pipeline stage."""
    groups = _GROUPS
    dist.send(x.contiguous(), dst=groups.pp_peer(groups.pp_rank + 1), group=groups.pp_group)


def pp_broadcast_from_last(x: torch.Tensor) -> torch.Tensor:
    """The last stage's ``x`` on every stage (in place)."""
    groups = _GROUPS
    dist.broadcast(x, src=groups.pp_peer(groups.pp_size - 1), group=groups.pp_group)
    return x
