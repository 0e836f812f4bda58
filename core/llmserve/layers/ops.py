"""The kernels layers (and the runner's sampling step) call, as one open table of named ops.

Layers hold a ``LayerOps`` table and call through it (``self.ops.rms_norm(...)``), so a
platform hands the model fused kernels (``Platform.layer_ops()``) without touching model code.
The runner takes ``apply_token_bitmask`` (the structured-output mask) from the same table.
The table is open both ways: ``replace`` swaps any op by name (a platform may bring a fused
norm and keep the torch rotary), ``extend`` adds ops that layers of a plugin need. A table is
immutable; both return a new one. ``TORCH_OPS`` is the reference: plain torch, the numerics
every other table is tested against.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   residual: Optional[torch.Tensor] = None
                   ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """norm(x) * weight, or with ``residual``: (norm(x + residual) * weight, x + residual).
    Computed in float32 and cast back before the weight, as the HF reference does."""
    if residual is not None:
        x = x + residual
    dtype = x.dtype
    xf = x.float()
    out = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
    return out if residual is None else (out, x)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def torch_rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                 cos_cache: torch.Tensor, sin_cache: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q [T, H, D] and k [T, KVH, D] at each token's position."""
    cos = cos_cache[positions].unsqueeze(1).to(q.dtype)
    sin = sin_cache[positions].unsqueeze(1).to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def torch_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def torch_apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                              rows: torch.Tensor) -> None:
    """Set ``logits[rows[i], t]`` to -inf, in place, for every token ``t`` that bit ``t % 32`` of
    word ``t // 32`` of ``bitmask[i]`` forbids. ``logits`` [N, V] float, ``bitmask`` [M, W]
    int32 with ``W * 32 >= V``, ``rows`` [M] long; rows not named are left alone."""
    vocab = logits.shape[1]
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :vocab].bool()
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))


#: Names a table keeps for itself.
_RESERVED = frozenset({"name", "names", "as_dict", "replace", "extend"})

class LayerOps:
    """An immutable table of named ops, read as attributes: ``ops.rms_norm(x, w, eps)``.

    Each op is a plain instance attribute, so a layer's call costs one attribute lookup in the
    hot path; only a missing name reaches ``__getattr__``, which says what the table holds.
    """

    def __init__(self, name: str, ops: Mapping[str, Callable]) -> None:
        for op, fn in ops.items():
            if not op.isidentifier() or op.startswith("_") or op in _RESERVED:
                raise ValueError(f"layer op name {op!r} must be a public identifier other "
                                 f"than {', '.join(sorted(_RESERVED))}")
            if not callable(fn):
                raise TypeError(f"layer op {op!r} of table {name!r} must be callable, got "
                                f"{type(fn).__name__}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_names", tuple(sorted(ops)))
        for op, fn in ops.items():
            object.__setattr__(self, op, fn)

    def __getattr__(self, op: str) -> Callable:
        # Reached only for names that are not in the table.
        if op.startswith("__"):
            raise AttributeError(op)
        raise AttributeError(f"layer op {op!r} is not in table {self.name!r}; it has: "
                             f"{', '.join(self._names)}")

    def __setattr__(self, op: str, value) -> None:
        raise AttributeError(f"LayerOps {self.name!r} is immutable; use replace() or extend()")

    def __getitem__(self, op: str) -> Callable:
        return getattr(self, op)

    def __contains__(self, op: str) -> bool:
        return op in self._names

    @property
    def names(self) -> tuple[str, ...]:
        """The ops in the table, sorted."""
        return self._names

    def as_dict(self) -> dict[str, Callable]:
        return {op: getattr(self, op) for op in self._names}

    def replace(self, name: Optional[str] = None, /, **ops: Callable) -> "LayerOps":
        """A copy with the given ops swapped (and renamed to ``name`` if given). Every op must
        already be in the table: a misspelt name would otherwise leave the reference op
        silently in place."""
        unknown = sorted(set(ops) - set(self._names))
        if unknown:
            raise ValueError(f"cannot replace layer ops {unknown}: not in table {self.name!r} "
                             f"(it has: {', '.join(self._names)}); add new ops with extend()")
        return LayerOps(name or self.name, {**self.as_dict(), **ops})

    def extend(self, name: Optional[str] = None, /, **ops: Callable) -> "LayerOps":
        """A copy with new ops added (and renamed to ``name`` if given); an op already in the
        table is an error (swap it with ``replace``)."""
        clash = sorted(set(ops) & set(self._names))
        if clash:
            raise ValueError(f"layer ops {clash} are already in table {self.name!r}; swap them "
                             "with replace()")
        return LayerOps(name or self.name, {**self.as_dict(), **ops})

    def __repr__(self) -> str:
        return f"LayerOps({self.name!r}, ops={list(self._names)})"


TORCH_OPS = LayerOps("torch", {"rms_norm": torch_rms_norm, "rotary": torch_rotary,
                               "silu_and_mul": torch_silu_and_mul,
                               "apply_token_bitmask": torch_apply_token_bitmask})
