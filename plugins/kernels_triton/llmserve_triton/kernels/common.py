"""Small helpers shared by the kernel wrappers and the ahead-of-time compile specs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: torch dtype -> Triton's name for it in a ``triton.compile`` signature.
TRITON_TYPE_NAMES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}

#: Activation / cache dtypes the kernels accept.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")


def ptr(dtype: torch.dtype) -> str:
    """Signature entry for a pointer to ``dtype``: ``torch.float16`` -> ``"*fp16"``."""
    return "*" + TRITON_TYPE_NAMES[dtype]


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
