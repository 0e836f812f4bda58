"""``NemotronHForCausalLM`` (NVIDIA Nemotron-H): pre-norm blocks ``x + mixer(norm(x))`` whose
mixer is one of Mamba2, attention or a squared-ReLU MLP.

The kinds come from ``layers_block_type`` (older configs: ``hybrid_override_pattern``, one
character a layer, ``M`` Mamba2, ``*`` attention, ``-`` MLP, ``E`` MoE). MoE blocks
(Nemotron 3) are not served. Only Mamba and attention layers cache, so a layer's cache index
is its place among those, not its layer number. What HF does and this module matches:

* attention has no positional encoding and no bias (``attention_bias`` is ignored);
* the Mamba2 step size is clamped to ``(time_step_min, inf)``, not to ``time_step_limit``;
* the residual stream stays in the model dtype (``residual_in_fp32`` is ignored);
* the block norms multiply by their weight in fp32 before casting back (``NemotronHRMSNorm``);
* ``lm_head`` is never tied to the embeddings, whatever ``tie_word_embeddings`` says.

HF saves the checkpoint as ``backbone.{embeddings, layers.{i}.norm, layers.{i}.mixer, norm_f}``
and ``lm_head`` (and loads ``model.`` as well); both prefixes load here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from llmserve.models.base import ModelBuildContext
from llmserve_ssm.cache import ssm_state_dtype
from llmserve_ssm.layers.attention import QKV_SHARDS, HybridAttention
from llmserve_ssm.layers.mamba2 import Mamba2Dims, Mamba2Mixer
from llmserve_ssm.layers.mlp import Relu2MLP
from llmserve_ssm.layers.step import MambaStep
from llmserve_ssm.models.weights import load_by_name

MAMBA, ATTENTION, MLP = "linear_attention", "full_attention", "mlp"
#: ``hybrid_override_pattern`` characters and transformers 4 kind names -> kind.
LEGACY_KINDS = {"M": MAMBA, "*": ATTENTION, "-": MLP, "E": "moe",
                "mamba": MAMBA, "attention": ATTENTION}


def layer_kinds(cfg: dict[str, Any]) -> list[str]:
    kinds = cfg.get("layers_block_type") or list(cfg.get("hybrid_override_pattern") or "")
    if not kinds:
        raise ValueError("NemotronHForCausalLM: config.json has neither layers_block_type nor "
                         "hybrid_override_pattern")
    kinds = [LEGACY_KINDS.get(kind, kind) for kind in kinds]
    unsupported = sorted(set(kinds) - {MAMBA, ATTENTION, MLP})
    if unsupported:
        raise ValueError(f"NemotronHForCausalLM: layer kinds {unsupported} are not supported; "
                         f"supported: {MAMBA}, {ATTENTION}, {MLP}")
    return kinds


def _key(cfg: dict[str, Any], name: str, legacy: str, default: Any) -> Any:
    """A Mamba setting under its current name or its ``mamba_*`` name (which HF lets win)."""
    return cfg[legacy] if legacy in cfg else cfg.get(name, default)


def nemotron_h_mamba_dims(cfg: dict[str, Any], dtype: torch.dtype) -> Mamba2Dims:
    """The mixer's sizes; the SSM state in ``mamba_ssm_cache_dtype`` (HF's default: fp32)."""
    return Mamba2Dims(ssm_state_dtype=ssm_state_dtype(cfg, str(dtype).removeprefix("torch.")),
                      hidden_size=cfg["hidden_size"], num_heads=cfg.get("mamba_num_heads", 128),
                      head_dim=cfg.get("mamba_head_dim", 64),
                      n_groups=_key(cfg, "n_groups", "mamba_n_groups", 8),
                      d_state=cfg.get("ssm_state_size", 128),
                      conv_kernel=_key(cfg, "conv_kernel", "mamba_d_conv", 4),
                      chunk_size=_key(cfg, "chunk_size", "mamba_chunk_size", 128),
                      eps=cfg.get("layer_norm_epsilon", 1e-5),
                      use_conv_bias=_key(cfg, "use_conv_bias", "mamba_conv_bias", True),
                      use_bias=cfg.get("use_bias", False),
                      dt_limit=(float(_key(cfg, "time_step_min", "mamba_dt_min", 1e-3)),
                                math.inf))


def check_activations(cfg: dict[str, Any]) -> None:
    for key, supported in (("mamba_hidden_act", "silu"), ("mlp_hidden_act", "relu2")):
        act = cfg.get(key, supported)
        if act != supported:
            raise ValueError(f"NemotronHForCausalLM: {key} {act!r} is not supported; "
                             f"supported: {supported}")


class NemotronHRMSNorm(nn.Module):
    """RMSNorm whose weight multiply is in fp32, the product cast back once (HF's order; the
    core's RMSNorm casts before the multiply, which differs in half precision)."""

    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


class NemotronHBlock(nn.Module):
    def __init__(self, cfg: dict[str, Any], kind: str, cache_index: int,
                 ctx: ModelBuildContext) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.kind = kind
        self.norm = NemotronHRMSNorm(hidden, cfg.get("layer_norm_epsilon", 1e-5), ctx.dtype)
        if kind == MAMBA:
            self.mixer = Mamba2Mixer(nemotron_h_mamba_dims(cfg, ctx.dtype), cache_index, ctx.dtype,
                                     ctx.linear_method)
        elif kind == ATTENTION:
            self.mixer = HybridAttention(hidden, cfg["num_attention_heads"],
                                         cfg.get("num_key_value_heads")
                                         or cfg["num_attention_heads"],
                                         cfg.get("head_dim", 128), cache_index, ctx)
        else:
            self.mixer = Relu2MLP(hidden, cfg["intermediate_size"],
                                  bool(cfg.get("mlp_bias", False)), ctx)

    def cache_spec(self, block_size: int) -> CacheSpec:
        if self.kind == ATTENTION:
            return self.mixer.cache_spec(block_size)
        return self.mixer.cache_spec()

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, fctx: ForwardContext,
                step: MambaStep | None) -> torch.Tensor:
        x = self.norm(hidden)
        if self.kind == MAMBA:
            x = self.mixer(x, fctx.kv_caches, step)
        elif self.kind == ATTENTION:
            x = self.mixer(positions, x, fctx)
        else:
            x = self.mixer(x)
        return hidden + x


class NemotronHModel(nn.Module):
    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        check_activations(cfg)
        kinds = layer_kinds(cfg)
        caching = [kind != MLP for kind in kinds]
        cache_index = [sum(caching[:i]) for i in range(len(kinds))]
        self.embeddings = VocabParallelEmbedding(cfg["vocab_size"], cfg["hidden_size"],
                                                 ctx.dtype)
        self.layers = nn.ModuleList(NemotronHBlock(cfg, kind, cache_index[i], ctx)
                                    for i, kind in enumerate(kinds))
        self.norm_f = NemotronHRMSNorm(cfg["hidden_size"], cfg.get("layer_norm_epsilon", 1e-5),
                                       ctx.dtype)
        self.has_mamba = MAMBA in kinds

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        step = MambaStep.of(fctx, input_ids.device) if self.has_mamba else None
        hidden = self.embeddings(input_ids)
        for layer in self.layers:
            hidden = layer(positions, hidden, fctx, step)
        return self.norm_f(hidden)


class NemotronHForCausalLM(nn.Module):
    """Serves the HF architecture ``NemotronHForCausalLM`` (Mamba2, attention and MLP blocks)."""

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.model = NemotronHModel(cfg, ctx)
        self.lm_head = ParallelLMHead(cfg["vocab_size"], cfg["hidden_size"], ctx.dtype)

    @classmethod
    def build_context_flags(cls, cfg: dict[str, Any]) -> dict[str, bool]:
        return {}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        return self.model(input_ids, positions, fctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def cache_specs(self, block_size: int) -> list[CacheSpec]:
        return [layer.cache_spec(block_size) for layer in self.model.layers
                if layer.kind != MLP]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def rename(name: str) -> str | None:
            if name.startswith("mtp."):  # multi-token-prediction layers, unused (as in HF)
                return None
            return "model." + name[len("backbone."):] if name.startswith("backbone.") else name

        return load_by_name(self, weights, rename, QKV_SHARDS)
