"""Loading HF checkpoints by name into the SSM models' parameters."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn


def load_by_name(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                 rename: Callable[[str], str | None] = lambda name: name,
                 fused: Mapping[str, tuple[str, str | int]] = {}) -> set[str]:
    """Copy each checkpoint tensor into the parameter ``rename(name)`` names (skipped when
    that is None). A name containing a key of ``fused`` (``".q_proj."``) goes into the fused
    parameter that key maps to (``".qkv_proj."``) with the shard id. Parameters with a
    ``weight_loader`` (the core's parallel layers) load through it, which places shards and
    tensor-parallel slices; the others must match the tensor's shape. Returns the parameters
    loaded; a tensor with no parameter raises ``KeyError`` naming it."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for ckpt_name, tensor in weights:
        name = rename(ckpt_name)
        if name is None:
            continue
        piece = next((p for p in fused if p in name), None)
        shard = None
        if piece is not None:
            target, shard = fused[piece]
            name = name.replace(piece, target)
        param = params.get(name)
        if param is None:
            raise KeyError(f"checkpoint tensor {ckpt_name!r} has no matching parameter")
        loader = getattr(param, "weight_loader", None)
        if loader is not None:
            loader(param, tensor) if shard is None else loader(param, tensor, shard)
        elif tuple(param.shape) != tuple(tensor.shape):
            raise ValueError(f"checkpoint tensor {ckpt_name!r} has shape {tuple(tensor.shape)}, "
                             f"parameter {name!r} expects {tuple(param.shape)}")
        else:
            param.data.copy_(tensor)
        loaded.add(name)
    return loaded
