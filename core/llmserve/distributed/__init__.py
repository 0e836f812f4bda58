"""Tensor-parallel state. Single-process today (world size 1); layers already ask it."""

from llmserve.distributed.parallel_state import get_tp_rank, get_tp_world_size

__all__ = ["get_tp_rank", "get_tp_world_size"]
