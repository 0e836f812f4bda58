"""``Mamba2ForCausalLM``: the Mamba stack (``stack``) with Mamba2 mixers."""

from __future__ import annotations

from typing import Any

from llmserve.models.base import ModelBuildContext

from llmserve_ssm.layers.mamba2 import Mamba2Dims, Mamba2Mixer, time_step_limit
from llmserve_ssm.models.stack import MambaStackForCausalLM


def mamba2_dims(cfg: dict[str, Any]) -> Mamba2Dims:
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim", 64)
    num_heads = cfg.get("num_heads") or int(cfg.get("expand", 2) * hidden) // head_dim
    return Mamba2Dims(hidden_size=hidden, num_heads=num_heads, head_dim=head_dim,
                      n_groups=cfg.get("n_groups", 1), d_state=cfg.get("state_size", 128),
                      conv_kernel=cfg.get("conv_kernel", 4), chunk_size=cfg.get("chunk_size", 256),
                      eps=cfg.get("layer_norm_epsilon", 1e-5),
                      use_conv_bias=cfg.get("use_conv_bias", True),
                      use_bias=cfg.get("use_bias", False), dt_limit=time_step_limit(cfg))


class Mamba2ForCausalLM(MambaStackForCausalLM):
    """Serves the HF architecture ``Mamba2ForCausalLM``."""

    @staticmethod
    def build_mixer(cfg: dict[str, Any], layer_idx: int, ctx: ModelBuildContext) -> Mamba2Mixer:
        return Mamba2Mixer(mamba2_dims(cfg), layer_idx, ctx.dtype, ctx.linear_method)
