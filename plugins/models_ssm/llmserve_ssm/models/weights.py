"""Loading HF checkpoints by name into the SSM models' parameters."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


def load_by_name(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                 rename: Callable[[str], str | None] = lambda name: name) -> set[str]:
    """Copy each checkpoint tensor into the parameter ``rename(name)`` names (skipped when
    that is None), through its ``weight_loader`` where it has one. Returns the parameters
    loaded; a tensor with no parameter raises ``KeyError`` naming it."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for ckpt_name, tensor in weights:
        name = rename(ckpt_name)
        if name is None:
            continue
        param = params.get(name)
        if param is None:
            raise KeyError(f"checkpoint tensor {ckpt_name!r} has no matching parameter")
        if tuple(param.shape) != tuple(tensor.shape):
            raise ValueError(f"checkpoint tensor {ckpt_name!r} has shape {tuple(tensor.shape)}, "
                             f"parameter {name!r} expects {tuple(param.shape)}")
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            param.data.copy_(tensor)
        else:
            loader(param, tensor)
        loaded.add(name)
    return loaded

