"""What a model class is given at construction, and HF-config readers shared by models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from llmserve.layers.linear import LinearMethod
from llmserve.layers.ops import TORCH_OPS, LayerOps


@dataclass
class ModelBuildContext:
    dtype: torch.dtype
    #: Attention backend class (see ``llmserve.attention.backend.AttentionBackend``).
    attn_backend: type
    max_position: int
    linear_method: Optional[LinearMethod] = None
    #: Elementwise kernels the layers call (the platform's ``layer_ops()``).
    ops: LayerOps = TORCH_OPS
    #: Architecture switches a model class reads off the config (e.g. qkv_bias, qk_norm),
    #: from its ``build_context_flags``.
    flags: dict[str, bool] = field(default_factory=dict)


def rope_settings(cfg: dict[str, Any]) -> tuple[float, Optional[dict[str, Any]]]:
    """(rope theta, scaling parameters) from an HF config of any transformers version.

    Older configs carry ``rope_theta`` and ``rope_scaling``; newer ones ``rope_parameters``
    with the theta inside.
    """
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or None
    theta = cfg.get("rope_theta")
    if params is not None and theta is None:
        theta = params.get("rope_theta")
    return float(theta if theta is not None else 10000.0), params
