"""A stack of pre-norm Mamba blocks with an LM head: Mamba1 and Mamba2 differ only in the
mixer (``build_mixer``); every layer is a state layer.

Layout and names follow the HF checkpoints of both: ``backbone.embeddings``,
``backbone.layers.{i}.norm`` and ``.mixer``, ``backbone.norm_f``, ``lm_head`` (often tied to
the embeddings; some checkpoints call the table ``backbone.embedding``). With
``residual_in_fp32`` (the default) the residual stream is kept in fp32 between blocks, as HF
does.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from llmserve.layers.norm import RMSNorm
from llmserve.models.base import ModelBuildContext
from llmserve_ssm.layers.step import MambaStep
from llmserve_ssm.models.weights import load_by_name

#: (config, layer index = cache index, build context) -> the layer's mixer.
MixerFactory = Callable[[dict[str, Any], int, ModelBuildContext], nn.Module]


class MambaBlock(nn.Module):
    def __init__(self, cfg: dict[str, Any], layer_idx: int, ctx: ModelBuildContext,
                 build_mixer: MixerFactory) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg["hidden_size"], cfg.get("layer_norm_epsilon", 1e-5), ctx.dtype,
                            ctx.ops)
        self.mixer = build_mixer(cfg, layer_idx, ctx)

    def forward(self, hidden: torch.Tensor, kv_caches: list, step: MambaStep) -> torch.Tensor:
        return self.mixer(self.norm(hidden.to(self.norm.weight.dtype)), kv_caches, step)


class MambaBackbone(nn.Module):
    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext,
                 build_mixer: MixerFactory) -> None:
        super().__init__()
        self.embeddings = VocabParallelEmbedding(cfg["vocab_size"], cfg["hidden_size"], ctx.dtype)
        self.layers = nn.ModuleList(MambaBlock(cfg, i, ctx, build_mixer)
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


class MambaStackForCausalLM(nn.Module):
    """The model class; a subclass names its mixer with ``build_mixer``."""

    @staticmethod
    def build_mixer(cfg: dict[str, Any], layer_idx: int, ctx: ModelBuildContext) -> nn.Module:
        raise NotImplementedError

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.backbone = MambaBackbone(cfg, ctx, self.build_mixer)
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
            return name.replace("backbone.embedding.", "backbone.embeddings.")

        return load_by_name(self, weights, rename)
