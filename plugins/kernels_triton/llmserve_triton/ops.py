"""Layer-level fast paths as plain functions over torch tensors, and the op table of them.

These are the entry points hardware plugins call; each mirrors a core reference layer:

- ``rms_norm(x, weight, eps, residual=None)``      ~ ``llmserve.layers.norm.RMSNorm``
- ``rotary(positions, q, k, cos_cache, sin_cache)`` ~ ``llmserve.layers.rotary.RotaryEmbedding``
- ``silu_and_mul(x)``                               ~ ``llmserve.layers.activation.SiluAndMul``
- ``reshape_and_cache`` and ``paged_attention``     ~ ``llmserve.attention.torch_ref``
- ``apply_token_bitmask(logits, bitmask, rows)``    ~ ``llmserve.layers.ops``'s torch version

``layer_ops(tuning)`` is what a platform's ``layer_ops()`` returns: the core's table with the
element-wise ops replaced by these, launched with the platform's ``KernelTuning``.
"""

from __future__ import annotations

from functools import partial

from llmserve.layers.ops import TORCH_OPS, LayerOps

from llmserve_triton.kernels.activation import silu_and_mul
from llmserve_triton.kernels.attention import paged_attention
from llmserve_triton.kernels.cache import reshape_and_cache
from llmserve_triton.kernels.norm import rms_norm
from llmserve_triton.kernels.rotary import rotary
from llmserve_triton.kernels.token_bitmask import apply_token_bitmask
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning

__all__ = ["apply_token_bitmask", "layer_ops", "paged_attention", "reshape_and_cache",
           "rms_norm", "rotary", "silu_and_mul"]

_TABLE_OPS = {"rms_norm": rms_norm, "rotary": rotary, "silu_and_mul": silu_and_mul,
              "apply_token_bitmask": apply_token_bitmask}


def layer_ops(tuning: KernelTuning = DEFAULT_TUNING) -> LayerOps:
    """The Triton op table: named ``"triton"`` with the default tuning (the plain functions),
    ``"triton-<tuning>"`` with another (each op bound to it)."""
    if tuning is DEFAULT_TUNING:
        return TORCH_OPS.replace("triton", **_TABLE_OPS)
    return TORCH_OPS.replace(f"triton-{tuning.name}",
                             **{k: partial(f, tuning=tuning) for k, f in _TABLE_OPS.items()})
