"""The cache kind of a Mamba layer: a conv state and an SSM state per running request.

Registered through ``llmserve_cache_specs`` as ``"mamba_state"``. It is a
``PerRequestStateSpec``, so the engine handles it as one: a slot per running sequence,
reserved from the KV budget before paged blocks (``plan_kv_cache``), held from admission to
finish, abort or preemption, and the same slot in every Mamba layer of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from llmserve.kv_cache.spec import PerRequestStateSpec


@dataclass(frozen=True)
class MambaStateSpec(PerRequestStateSpec):
    """``shapes`` = (conv state (K-1, conv_dim), SSM state): Mamba1's SSM state is
    (d_inner, d_state), Mamba2's (num_heads, head_dim, d_state)."""

    kind: ClassVar[str] = "mamba_state"


def mamba_state_spec(conv_kernel: int, conv_dim: int, ssm_shape: tuple[int, ...],
                     dtype_bytes: int, ssm_dtype: str | None = None) -> MambaStateSpec:
    """The spec of one Mamba layer; the conv state keeps the last ``conv_kernel - 1`` inputs.
    ``ssm_dtype`` keeps the SSM state in another dtype than the model's (``"float32"``)."""
    return MambaStateSpec(shapes=((conv_kernel - 1, conv_dim), tuple(ssm_shape)),
                          dtype_bytes=dtype_bytes,
                          dtypes=(None, ssm_dtype) if ssm_dtype else ())


def ssm_state_dtype(cfg: dict, model_dtype_name: str) -> str | None:
    """The HF config's ``mamba_ssm_cache_dtype`` when it differs from the model's dtype."""
    name = cfg.get("mamba_ssm_cache_dtype")
    if name in (None, "auto", model_dtype_name):
        return None
    return str(name).replace("torch.", "")
