"""``BambaForCausalLM`` (IBM): Llama-style decoder layers whose mixer is attention in the layers
``attn_layer_indices`` names and Mamba2 in all others.

Each layer is ``x + mixer(input_layernorm(x))``, then ``+ feed_forward(pre_ff_layernorm(x))``
with a gated SiLU MLP in every layer; the residual stream stays in the model dtype (Bamba has
no ``residual_in_fp32``), so the core's fused add+RMSNorm computes exactly what HF does.
Attention rotates only the first ``partial_rotary_factor`` of each head: HF's ``BambaConfig``
sets 0.5 unless ``rope_parameters`` names another. The Mamba2 mixer takes its sizes from the
``mamba_*`` keys and its norm epsilon from ``rms_norm_eps``.

Names follow the HF checkpoint: ``model.embed_tokens``, ``model.layers.{i}.input_layernorm``,
``.mamba`` or ``.self_attn``, ``.pre_ff_layernorm``, ``.feed_forward``,
``model.final_layernorm``, ``lm_head`` (tied only with ``tie_word_embeddings``).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from llmserve.layers.norm import RMSNorm
from llmserve.layers.rotary import get_rope
from llmserve.models.base import ModelBuildContext, rope_settings
from llmserve_ssm.layers.attention import QKV_SHARDS, HybridAttention
from llmserve_ssm.layers.mamba2 import Mamba2Dims, Mamba2Mixer, time_step_limit
from llmserve_ssm.layers.mlp import GATE_UP_SHARDS, GatedSiluMLP
from llmserve_ssm.layers.step import MambaStep
from llmserve_ssm.models.weights import load_by_name

#: HF's ``BambaConfig`` default when ``rope_parameters`` has no ``partial_rotary_factor``.
DEFAULT_PARTIAL_ROTARY_FACTOR = 0.5


def bamba_mamba_dims(cfg: dict[str, Any]) -> Mamba2Dims:
    hidden = cfg["hidden_size"]
    num_heads = cfg.get("mamba_n_heads", 128)
    head_dim = cfg.get("mamba_d_head", "auto")
    if head_dim == "auto":
        head_dim = cfg.get("mamba_expand", 2) * hidden // num_heads
    return Mamba2Dims(hidden_size=hidden, num_heads=num_heads, head_dim=head_dim,
                      n_groups=cfg.get("mamba_n_groups", 1), d_state=cfg.get("mamba_d_state", 256),
                      conv_kernel=cfg.get("mamba_d_conv", 4),
                      chunk_size=cfg.get("mamba_chunk_size", 256),
                      eps=cfg.get("rms_norm_eps", 1e-5),
                      use_conv_bias=cfg.get("mamba_conv_bias", True),
                      use_bias=cfg.get("mamba_proj_bias", False), dt_limit=time_step_limit(cfg))


def bamba_attention(cfg: dict[str, Any], cache_index: int,
                    ctx: ModelBuildContext) -> HybridAttention:
    hidden, num_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // num_heads
    theta, rope_params = rope_settings(cfg)
    factor = (rope_params or {}).get("partial_rotary_factor", DEFAULT_PARTIAL_ROTARY_FACTOR)
    rotary = get_rope(int(head_dim * factor), ctx.max_position, theta, rope_params, ctx.ops)
    bias = bool(cfg.get("attention_bias", False))
    return HybridAttention(hidden, num_heads, cfg.get("num_key_value_heads") or num_heads,
                           head_dim, cache_index, ctx, qkv_bias=bias, o_bias=bias,
                           rotary=rotary)


class BambaDecoderLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any], is_attention: bool, cache_index: int,
                 ctx: ModelBuildContext) -> None:
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-5)
        self.is_attention = is_attention
        self.input_layernorm = RMSNorm(hidden, eps, ctx.dtype, ctx.ops)
        if is_attention:
            self.self_attn = bamba_attention(cfg, cache_index, ctx)
        else:
            self.mamba = Mamba2Mixer(bamba_mamba_dims(cfg), cache_index, ctx.dtype,
                                     ctx.linear_method)
        self.pre_ff_layernorm = RMSNorm(hidden, eps, ctx.dtype, ctx.ops)
        self.feed_forward = GatedSiluMLP(hidden, cfg["intermediate_size"],
                                         bool(cfg.get("mlp_bias", False)), ctx)

    def cache_spec(self, block_size: int) -> CacheSpec:
        if self.is_attention:
            return self.self_attn.cache_spec(block_size)
        return self.mamba.cache_spec()

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None, fctx: ForwardContext,
                step: MambaStep | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (feed-forward output, residual stream before it); the caller's next norm
        adds the two."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        if self.is_attention:
            hidden = self.self_attn(positions, hidden, fctx)
        else:
            hidden = self.mamba(hidden, fctx.kv_caches, step)
        hidden, residual = self.pre_ff_layernorm(hidden, residual)
        return self.feed_forward(hidden), residual


class BambaModel(nn.Module):
    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        check_activation(cfg)
        hidden = cfg["hidden_size"]
        attn = set(cfg.get("attn_layer_indices") or ())
        self.embed_tokens = VocabParallelEmbedding(cfg["vocab_size"], hidden, ctx.dtype)
        # Every layer caches (K/V or Mamba state), so a layer's cache index is its number.
        self.layers = nn.ModuleList(BambaDecoderLayer(cfg, i in attn, i, ctx)
                                    for i in range(cfg["num_hidden_layers"]))
        self.final_layernorm = RMSNorm(hidden, cfg.get("rms_norm_eps", 1e-5), ctx.dtype, ctx.ops)
        self.has_mamba = any(not layer.is_attention for layer in self.layers)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        step = MambaStep.of(fctx, input_ids.device) if self.has_mamba else None
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, fctx, step)
        hidden, _ = self.final_layernorm(hidden, residual)
        return hidden


def check_activation(cfg: dict[str, Any]) -> None:
    """``hidden_act`` is both the MLP's and the Mamba conv's activation; both run SiLU."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"BambaForCausalLM: hidden_act {act!r} is not supported; supported: "
                         "silu")


class BambaForCausalLM(nn.Module):
    """Serves the HF architecture ``BambaForCausalLM``."""

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.model = BambaModel(cfg, ctx)
        self.lm_head = ParallelLMHead(cfg["vocab_size"], cfg["hidden_size"], ctx.dtype)
        self.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    @classmethod
    def build_context_flags(cls, cfg: dict[str, Any]) -> dict[str, bool]:
        return {}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        return self.model(input_ids, positions, fctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def cache_specs(self, block_size: int) -> list[CacheSpec]:
        return [layer.cache_spec(block_size) for layer in self.model.layers]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def rename(name: str) -> str | None:
            if "rotary_emb.inv_freq" in name:
                return None
            if self.tie_word_embeddings and name.startswith("lm_head."):
                return None
            return name

        return load_by_name(self, weights, rename, {**QKV_SHARDS, **GATE_UP_SHARDS})
