"""Helpers shared by the SSM Triton kernels, their wrappers and the ahead-of-time specs.

This package does not depend on ``llmserve_triton``; ``AotSpec`` here has the same shape as
that plugin's (the compile tests feed it to ``triton.compile`` the same way).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import triton
import triton.language as tl

#: torch dtype -> Triton's name for it in a ``triton.compile`` signature.
TRITON_TYPE_NAMES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "i1",
}

#: Activation and state dtypes the kernels accept.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: ``state_indices`` / ``cu_seqlens`` dtypes the kernels are built for (others are converted).
INDEX_DTYPES = (torch.int32, torch.int64)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def ptr(dtype: torch.dtype) -> str:
    """Signature entry for a pointer to ``dtype``: ``torch.float16`` -> ``"*fp16"``."""
    return "*" + TRITON_TYPE_NAMES[dtype]


def interpreting() -> bool:
    """Whether kernels run under the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class AotSpec:
    """One kernel specialisation as ``triton.compile`` wants it.

    ``arg_types`` gives the type of every runtime argument by name (``"*fp16"``, ``"i32"``,
    ``"fp32"``); every argument named in ``constexprs`` becomes ``"constexpr"``.
    """

    kernel: Callable
    arg_types: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    label: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> dict[str, str]:
        names = self.kernel.arg_names
        missing = [n for n in names if n not in self.arg_types and n not in self.constexprs]
        if missing:
            raise ValueError(f"{self.kernel.__name__}: no type for arguments {missing}")
        return {n: "constexpr" if n in self.constexprs else self.arg_types[n] for n in names}


def unique_specs(specs: list[AotSpec]) -> list[AotSpec]:
    """``specs`` without repeats (same kernel, signature, constexprs and warps): variants
    that differ only in flags a kernel does not take compile to the same binary."""
    seen, out = set(), []
    for spec in specs:
        key = (spec.kernel.__name__, tuple(sorted(spec.signature().items())),
               tuple(sorted(spec.constexprs.items())), spec.num_warps)
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out


def int_types(kernel) -> dict[str, str]:
    """Every argument of ``kernel`` typed ``i32``: the starting point of a spec's types."""
    return {n: "i32" for n in kernel.arg_names}


# --------------------------------------------------------------------------------------------
# Argument checks and preparation (host side only: no device-to-host synchronisation).


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a unit stride in its last dimension (a copy only where it has none)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def check_state(name: str, state: torch.Tensor, row_shape: tuple[int, ...]) -> None:
    """A slot tensor ``(num_slots, *row_shape)`` the kernels write in place: float, on a unit
    last stride (other strides are free)."""
    check_float(name, state)
    if state.dim() != 1 + len(row_shape) or tuple(state.shape[1:]) != tuple(row_shape):
        raise ValueError(f"{name} must have shape (num_slots, {', '.join(map(str, row_shape))}), "
                         f"got {tuple(state.shape)}")
    if state.shape[-1] > 1 and state.stride(-1) != 1:
        raise ValueError(f"{name} must have a unit stride in its last dimension (it is written "
                         f"in place), got strides {state.stride()}")


def index_tensor(name: str, t: torch.Tensor, length: int) -> torch.Tensor:
    """A 1-D integer tensor of ``length`` entries as int32 or int64 (other integer dtypes are
    converted; a device op, no sync)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {t.dtype}")
    if t.dtype not in INDEX_DTYPES:
        t = t.to(torch.int64)
    return t if t.stride(0) == 1 or length <= 1 else t.contiguous()


def bool_tensor(name: str, t: torch.Tensor | None, length: int, device: torch.device,
                default: bool = False) -> torch.Tensor:
    """A 1-D bool tensor of ``length`` entries; ``None`` means all ``default`` (as each
    reference kernel reads a missing ``has_initial_state``)."""
    if t is None:
        return torch.full((length,), default, dtype=torch.bool, device=device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    if t.dtype != torch.bool:
        t = t != 0
    return t if t.stride(0) == 1 or length <= 1 else t.contiguous()


def check_vector(name: str, t: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """An optional per-channel parameter of shape (length,)."""
    if t is None:
        return None
    check_float(name, t)
    if tuple(t.shape) != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    return rows_contiguous(t)


def silu_flag(activation: str | None) -> bool:
    if activation is None:
        return False
    if activation in ("silu", "swish"):
        return True
    raise ValueError(f"activation must be 'silu', 'swish' or None, got {activation!r}")


# --------------------------------------------------------------------------------------------
# Device helpers used inside the kernels.


@triton.jit
def _find_seq(cu_seqlens_ptr, block_idx, num_seqs, block):
    """The sequence owning flat block ``block_idx`` when sequence ``s``'s blocks of ``block``
    tokens are numbered from ``cu_seqlens[s] // block + s``: sequence ``s`` has at most
    ``cu_seqlens[s + 1] // block - cu_seqlens[s] // block + 1`` blocks, so the ranges never
    overlap, and ``num_tokens // block + num_seqs`` programs cover them all with host
    integers only. Binary search for the last ``s`` whose first block is ``<= block_idx``.
    ``block`` may be a constexpr or a runtime int."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(cu_seqlens_ptr + mid).to(tl.int32) // block + mid
        if first <= block_idx:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def num_flat_blocks(num_tokens: int, num_seqs: int, block: int) -> int:
    """Programs along the flat-block axis (see ``_find_seq``): host integers only."""
    return num_tokens // block + num_seqs


@triton.jit
def _softplus(x):
    """``torch.nn.functional.softplus`` (beta 1, threshold 20) in fp32: log1p(exp(x)) with
    log1p computed as log(u) * e / (u - 1), u = 1 + e, which keeps small results exact."""
    e = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + e
    log1p = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _dot(a, b, IEEE_FP32: tl.constexpr):
    """``a @ b`` with fp32 accumulation; ``IEEE_FP32``: exact fp32 products (no TF32)."""
    if IEEE_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)
