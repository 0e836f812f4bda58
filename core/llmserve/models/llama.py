"""The Llama family: Llama, Mistral, Qwen2 and Qwen3 are one module with config-driven flags.

Differences between the four are all in the HF config: grouped-query heads, an explicit
``head_dim``, attention bias (Qwen2 always, Llama when ``attention_bias``), per-head q/k RMSNorm
(Qwen3), tied embeddings, rope scaling and sliding-window attention (Mistral's
``sliding_window``; Qwen2's ``use_sliding_window`` from layer ``max_window_layers`` on; or the
config's ``layer_types``). Layer and parameter names mirror the HF checkpoint, so loading is a
name map (``STACKED_PARAMS``), not a conversion.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from llmserve.attention.backend import ForwardContext
from llmserve.distributed.parallel_state import (get_pp_rank, get_pp_world_size,
                                                 pp_broadcast_from_last, pp_layer_range,
                                                 pp_recv, pp_send)
from llmserve.kv_cache.spec import CacheSpec, FullAttentionSpec, SlidingWindowSpec
from llmserve.layers.activation import SiluAndMul
from llmserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from llmserve.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from llmserve.layers.norm import RMSNorm
from llmserve.layers.rotary import get_rope
from llmserve.models.base import ModelBuildContext, rope_settings

#: checkpoint name fragment -> (our fused parameter fragment, shard id)
STACKED_PARAMS = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


class LlamaAttention(nn.Module):
    """``input_size`` (default ``hidden_size``) is the width the q/k/v projections read: an
    EAGLE-3 head attends over its embedding and hidden state side by side."""

    def __init__(self, cfg: dict[str, Any], layer_idx: int, ctx: ModelBuildContext,
                 input_size: Optional[int] = None) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        total_heads = cfg["num_attention_heads"]
        total_kv = cfg.get("num_key_value_heads") or total_heads
        self.head_dim = cfg.get("head_dim") or hidden // total_heads
        bias = ctx.flags["qkv_bias"]
        self.qkv_proj = QKVParallelLinear(input_size or hidden, self.head_dim, total_heads,
                                          total_kv, bias=bias, dtype=ctx.dtype,
                                          linear_method=ctx.linear_method)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, hidden,
                                        bias=bool(cfg.get("attention_bias", False)),
                                        dtype=ctx.dtype, linear_method=ctx.linear_method)
        self.qk_norm = ctx.flags["qk_norm"]
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"], ctx.dtype, ctx.ops)
            self.k_norm = RMSNorm(self.head_dim, cfg["rms_norm_eps"], ctx.dtype, ctx.ops)
        theta, rope_params = rope_settings(cfg)
        self.rotary_emb = get_rope(self.head_dim, ctx.max_position, theta, rope_params,
                                   ctx.ops)
        self.layer_idx = layer_idx
        #: Where this layer's cache sits in ``ForwardContext.kv_caches``: its index among
        #: the layers of its pipeline stage.
        self.cache_index = layer_idx
        self.sliding_window = sliding_window_of_layer(cfg, layer_idx)
        self.attn = ctx.attn_backend(self.num_heads, self.head_dim, self.num_kv_heads,
                                     self.head_dim ** -0.5,
                                     sliding_window=self.sliding_window)
        self.kv_dtype_bytes = ctx.dtype.itemsize

    def cache_spec(self, block_size: int) -> CacheSpec:
        shape = dict(block_size=block_size, num_kv_heads=self.num_kv_heads,
                     head_size=self.head_dim, dtype_bytes=self.kv_dtype_bytes)
        if self.sliding_window is None:
            return FullAttentionSpec(**shape)
        return SlidingWindowSpec(**shape, sliding_window=self.sliding_window)

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        out = self.attn.forward(q, k, v.contiguous(), fctx.kv_caches[self.cache_index],
                                fctx.attn_metadata)
        return self.o_proj(out.reshape(-1, q_size))


def sliding_window_of_layer(cfg: dict[str, Any], layer_idx: int) -> int | None:
    """The layer's attention window, or None for full attention.

    ``layer_types`` (newer configs) names each layer's kind; without it, Qwen2-style configs
    window layers ``>= max_window_layers`` when ``use_sliding_window`` is set, and Mistral
    windows every layer when ``sliding_window`` is set.
    """
    window = cfg.get("sliding_window")
    if not window:
        return None
    layer_types = cfg.get("layer_types")
    if layer_types:
        return int(window) if layer_types[layer_idx] == "sliding_attention" else None
    if "use_sliding_window" in cfg:
        use = cfg["use_sliding_window"] and layer_idx >= cfg.get("max_window_layers", 0)
        return int(window) if use else None
    return int(window)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported; supported: silu")
        bias = bool(cfg.get("mlp_bias", False))
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [inter, inter], bias=bias,
                                                       dtype=ctx.dtype,
                                                       linear_method=ctx.linear_method)
        self.down_proj = RowParallelLinear(inter, hidden, bias=bias, dtype=ctx.dtype,
                                           linear_method=ctx.linear_method)
        self.act_fn = SiluAndMul(ctx.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any], layer_idx: int, ctx: ModelBuildContext) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, ctx)
        self.mlp = LlamaMLP(cfg, ctx)
        eps = cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps, ctx.dtype, ctx.ops)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps, ctx.dtype, ctx.ops)

    def forward(self, positions, hidden, residual, fctx):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, fctx)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class AbsentLayer(nn.Module):
    """A decoder layer another pipeline stage holds: no parameters, never called."""


class LlamaModel(nn.Module):
    """With pipeline parallelism each stage holds decoder layers ``[start, end)``: it takes
    the hidden state and residual from the previous stage and sends its own to the next.
    The last stage's final hidden states are broadcast back to every stage, so every stage
    computes the same logits and samples the same tokens, as tensor-parallel ranks do (the
    embedding, final norm and LM head live on every stage for that)."""

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.hidden_size = cfg["hidden_size"]
        self.embed_tokens = VocabParallelEmbedding(cfg["vocab_size"], cfg["hidden_size"],
                                                   ctx.dtype)
        self.start, self.end = pp_layer_range(cfg["num_hidden_layers"])
        self.num_stages, self.stage = get_pp_world_size(), get_pp_rank()
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, i, ctx) if self.start <= i < self.end else AbsentLayer()
            for i in range(cfg["num_hidden_layers"]))
        for layer in self.layers[self.start:self.end]:
            layer.self_attn.cache_index = layer.self_attn.layer_idx - self.start
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"], ctx.dtype, ctx.ops)

    def forward(self, input_ids, positions, fctx):
        if self.stage == 0:
            hidden, residual = self.embed_tokens(input_ids), None
        else:
            table = self.embed_tokens.weight
            hidden, residual = pp_recv(torch.empty(
                (2, len(input_ids), self.hidden_size), dtype=table.dtype,
                device=input_ids.device)).unbind(0)
        aux = fctx.aux_hidden_layers
        for i in range(self.start, self.end):
            if i in aux:
                fctx.aux_hidden_states.append(hidden if residual is None else hidden + residual)
            hidden, residual = self.layers[i](positions, hidden, residual, fctx)
        if self.num_stages == 1:
            return self.norm(hidden, residual)[0]
        if self.stage < self.num_stages - 1:
            pp_send(torch.stack((hidden, residual)))
            hidden = torch.empty_like(hidden)
        else:
            hidden = self.norm(hidden, residual)[0]
        return pp_broadcast_from_last(hidden)

    def owns(self, name: str) -> bool:
        """Whether checkpoint tensor ``name`` belongs to this stage."""
        if not name.startswith("model.layers."):
            return True
        return self.start <= int(name.split(".", 3)[2]) < self.end


class LlamaForCausalLM(nn.Module):
    """Serves the HF architectures LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and
    Qwen3ForCausalLM."""

    #: ``forward`` records the layer inputs that ``ForwardContext.aux_hidden_layers`` names.
    supports_aux_hidden_states = True
    #: Each pipeline stage builds and loads only its own decoder layers.
    supports_pipeline_parallel = True

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, ctx)
        self.lm_head = ParallelLMHead(cfg["vocab_size"], cfg["hidden_size"], ctx.dtype)
        self.tie_word_embeddings = bool(cfg.get("tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    @classmethod
    def build_context_flags(cls, cfg: dict[str, Any]) -> dict[str, bool]:
        """Per-architecture switches read off the HF config."""
        arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
        return {
            "qkv_bias": arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
            "qk_norm": arch == "Qwen3ForCausalLM",
        }

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        """Hidden states of every token in the flat batch: [num_tokens, hidden]."""
        return self.model(input_ids, positions, fctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, [num_tokens, hidden]: shared with draft heads (EAGLE)."""
        return self.model.embed_tokens(input_ids)

    def attention_layers(self) -> list[LlamaAttention]:
        """This stage's attention layers, in cache order."""
        model = self.model
        return [layer.self_attn for layer in model.layers[model.start:model.end]]

    def cache_specs(self, block_size: int) -> list[CacheSpec]:
        """One spec per layer, in the order of ``ForwardContext.kv_caches``."""
        return [attn.cache_spec(block_size) for attn in self.attention_layers()]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors into parameters by name; returns the parameters loaded."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if self.tie_word_embeddings and name.startswith("lm_head."):
                continue
            if not self.model.owns(name):
                continue
            loaded.add(load_checkpoint_tensor(params, name, tensor))
        return loaded


def load_checkpoint_tensor(params: dict[str, torch.nn.Parameter], name: str,
                           tensor: torch.Tensor) -> str:
    """Copy one checkpoint tensor into its parameter, through ``STACKED_PARAMS`` and the
    parameter's ``weight_loader``; returns the parameter's name."""
    shard_id = None
    for ckpt, (ours, sid) in STACKED_PARAMS.items():
        if ckpt in name:
            name, shard_id = name.replace(ckpt, ours), sid
            break
    param = params.get(name)
    if param is None:
        raise KeyError(f"checkpoint tensor {name!r} has no matching parameter")
    loader = getattr(param, "weight_loader", None)
    if loader is None:
        param.data.copy_(tensor)
    else:
        loader(param, tensor, shard_id) if shard_id is not None else loader(param, tensor)
    return name
