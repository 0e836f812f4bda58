"""``MambaForCausalLM`` (Mamba1): a stack of pre-norm Mamba blocks; every layer is a state layer.

Layout and names follow the HF checkpoint: ``backbone.embeddings``,
``backbone.layers.{i}.norm`` and ``.mixer``, ``backbone.norm_f``, ``lm_head`` (often tied to
the embeddings). With ``residual_in_fp32`` (the default) the residual stream is kept in fp32
between blocks, as HF does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from llmserve.layers.norm import RMSNorm
from llmserve.models.base import ModelBuildContext
from torch import nn

from llmserve_ssm.layers.mamba import MambaDims, MambaMixer
from llmserve_ssm.layers.step import MambaStep
from llmserve_ssm.models.weights import load_by_name


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


class MambaBlock(nn.Module):
    def __init__(self, cfg: dict[str, Any], layer_idx: int, ctx: ModelBuildContext) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg["hidden_size"], cfg.get("layer_norm_epsilon", 1e-5), ctx.dtype,
                            ctx.ops)
        self.mixer = MambaMixer(mamba_dims(cfg), layer_idx, ctx.dtype, ctx.linear_method)

    def forward(self, hidden: torch.Tensor, kv_caches: list, step: MambaStep) -> torch.Tensor:
        return self.mixer(self.norm(hidden.to(self.norm.weight.dtype)), kv_caches, step)


class MambaBackbone(nn.Module):
    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.embeddings = VocabParallelEmbedding(cfg["vocab_size"], cfg["hidden_size"], ctx.dtype)
        self.layers = nn.ModuleList(MambaBlock(cfg, i, ctx)
                                    for i in range(cfg["num_hidden_layers"]))
        self.norm_f = RMSNorm(cfg["hidden_size"], cfg.get("layer_norm_epsilon", 1e-5), ctx.dtype,
                              ctx.ops)
        self.residual_in_fp32 = bool(cfg.get("residual_in_fp32", True))

    def forward(self, input_ids: torch.Tensor, fctx: ForwardContext) -> torch.Tensor:
        step = MambaStep.of(fctx, input_ids.device)
        hidden = self.embeddings(input_ids)
        for layer in self.layers:
            residual = hidden.float() if self.residual_in_fp32 else hidden
            hidden = residual + layer(hidden, fctx.kv_caches, step)
        return self.norm_f(hidden.to(self.norm_f.weight.dtype))


class MambaForCausalLM(nn.Module):
    """Serves the HF architecture ``MambaForCausalLM``."""

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.backbone = MambaBackbone(cfg, ctx)
        self.lm_head = ParallelLMHead(cfg["vocab_size"], cfg["hidden_size"], ctx.dtype)
        self.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.backbone.embeddings)

    @classmethod
    def build_context_flags(cls, cfg: dict[str, Any]) -> dict[str, bool]:
        return {}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        return self.backbone(input_ids, fctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def cache_specs(self, block_size: int) -> list[CacheSpec]:
        return [layer.mixer.cache_spec() for layer in self.backbone.layers]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def rename(name: str) -> str | None:
            if self.tie_word_embeddings and name.startswith("lm_head."):
                return None
            # Some Mamba checkpoints call the table ``embedding``.
            return name.replace("backbone.embedding.", "backbone.embeddings.")

        return load_by_name(self, weights, rename)
