"""Portable Triton kernels for llmserve (NVIDIA and AMD).

Importing this package imports neither torch nor triton: the layer-level fast paths
(``rms_norm``, ``rotary``, ``silu_and_mul``, ``reshape_and_cache``, ``paged_attention``,
``apply_token_bitmask``), their op table ``layer_ops``, the ``KernelTuning`` that
configures them and the ``TritonPagedAttention`` backend are resolved on first
attribute access, so that ``llmserve plugins`` and the entry-point scan stay cheap, and so
that a test can set ``TRITON_INTERPRET=1`` before any kernel is defined.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "rms_norm": "llmserve_triton.ops",
    "rotary": "llmserve_triton.ops",
    "silu_and_mul": "llmserve_triton.ops",
    "reshape_and_cache": "llmserve_triton.ops",
    "paged_attention": "llmserve_triton.ops",
    "apply_token_bitmask": "llmserve_triton.ops",
    "layer_ops": "llmserve_triton.ops",
    "KernelTuning": "llmserve_triton.tuning",
    "DEFAULT_TUNING": "llmserve_triton.tuning",
    "TritonPagedAttention": "llmserve_triton.backend",
}

__all__ = ["DEFAULT_TUNING", "KernelTuning", "TritonPagedAttention", "apply_token_bitmask",
           "layer_ops", "paged_attention", "reshape_and_cache", "rms_norm", "rotary",
           "silu_and_mul"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmserve_triton' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
