"""Layer-level fast paths as plain functions over torch tensors.

These are the entry points hardware plugins call; each mirrors a core reference layer:

- ``rms_norm(x, weight, eps, residual=None)``      ~ ``llmserve.layers.norm.RMSNorm``
- ``rotary(positions, q, k, cos_cache, sin_cache)`` ~ ``llmserve.layers.rotary.RotaryEmbedding``
- ``silu_and_mul(x)``                               ~ ``llmserve.layers.activation.SiluAndMul``
- ``reshape_and_cache`` and ``paged_attention``     ~ ``llmserve.attention.torch_ref``
- ``apply_token_bitmask(logits, bitmask, rows)``    ~ ``llmserve.layers.ops``'s torch version
"""

from __future__ import annotations

from llmserve_triton.kernels.activation import silu_and_mul
from llmserve_triton.kernels.attention import paged_attention
from llmserve_triton.kernels.cache import reshape_and_cache
from llmserve_triton.kernels.norm import rms_norm
from llmserve_triton.kernels.rotary import rotary
from llmserve_triton.kernels.token_bitmask import apply_token_bitmask

__all__ = ["apply_token_bitmask", "paged_attention", "reshape_and_cache", "rms_norm", "rotary",
           "silu_and_mul"]
