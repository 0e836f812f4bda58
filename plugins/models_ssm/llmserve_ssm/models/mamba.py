"""``MambaForCausalLM`` (Mamba1): the Mamba stack (``stack``) with Mamba1 mixers."""

from __future__ import annotations

import math
from typing import Any

from llmserve.models.base import ModelBuildContext

from llmserve_ssm.layers.mamba import MambaDims, MambaMixer
from llmserve_ssm.models.stack import MambaStackForCausalLM


def mamba_dims(cfg: dict[str, Any]) -> MambaDims:
    """HF derives ``intermediate_size`` from ``expand`` (a saved ``intermediate_size`` is
    overwritten) and an ``"auto"`` ``time_step_rank`` as ceil(hidden / 16); so do we."""
    hidden = cfg["hidden_size"]
    dt_rank = cfg.get("time_step_rank", "auto")
    return MambaDims(hidden_size=hidden, d_inner=int(cfg.get("expand", 2) * hidden),
                     d_state=cfg.get("state_size", 16),
                     dt_rank=math.ceil(hidden / 16) if dt_rank == "auto" else int(dt_rank),
                     conv_kernel=cfg.get("conv_kernel", 4),
                     use_conv_bias=cfg.get("use_conv_bias", True),
                     use_bias=cfg.get("use_bias", False),
                     activation=cfg.get("hidden_act", "silu"))


class MambaForCausalLM(MambaStackForCausalLM):
    """Serves the HF architecture ``MambaForCausalLM``."""

    @staticmethod
    def build_mixer(cfg: dict[str, Any], layer_idx: int, ctx: ModelBuildContext) -> MambaMixer:
        return MambaMixer(mamba_dims(cfg), layer_idx, ctx.dtype, ctx.linear_method)
