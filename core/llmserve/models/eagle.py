"""EAGLE draft heads: a decoder layer or two that predict the target's next hidden state from
its current one and the next token, in the checkpoint layouts vLLM loads.

* EAGLE-1 (``EagleLlamaForCausalLM``; yuhuili/EAGLE-LLaMA3-Instruct-8B): ``fc`` mixes the
  embedding of token ``p + 1`` with the target's final hidden state at ``p``, then Llama
  decoder layers (the first without its input norm); the output, with no final norm, goes to
  the target's LM head and is fed back as the next step's hidden state.
* EAGLE-3 (``Eagle3LlamaForCausalLM``, the checkpoints' ``LlamaForCausalLMEagle3``;
  yuhuili/EAGLE3-LLaMA3.1-Instruct-8B): ``fc`` folds the inputs of three target layers into
  one hidden state; one ``midlayer`` attends over the normed embedding and normed hidden
  state side by side; ``norm`` and a head of its own over a smaller draft vocabulary, mapped
  back by ``d2t`` (target id = draft id + ``d2t[draft id]``). The fed-back hidden state is
  the one before ``norm``.

Both share the target's embedding (and EAGLE-1 its LM head) unless the checkpoint has its
own: ``share_target`` hands them over after loading. A head is not a servable model: its
``forward`` needs the hidden states that ``llmserve.spec_decode.eagle`` gives it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from llmserve.attention.backend import ForwardContext
from llmserve.kv_cache.spec import CacheSpec
from llmserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from llmserve.layers.linear import ReplicatedLinear
from llmserve.layers.norm import RMSNorm
from llmserve.models.base import ModelBuildContext
from llmserve.models.llama import (LlamaAttention, LlamaDecoderLayer, LlamaMLP,
                                   load_checkpoint_tensor)

EAGLE_ARCHITECTURE = "EagleLlamaForCausalLM"
#: Ours (vLLM's) first, then the name EAGLE-3 checkpoints carry.
EAGLE3_ARCHITECTURES = ("Eagle3LlamaForCausalLM", "LlamaForCausalLMEagle3")


def eagle3_aux_layers(cfg: dict[str, Any], num_target_layers: int) -> tuple[int, ...]:
    """The target layers whose inputs an EAGLE-3 head reads: the config's
    ``eagle_config.eagle_aux_hidden_state_layer_ids``, else (2, L // 2, L - 3)."""
    ids = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    L = num_target_layers
    return tuple(int(i) for i in ids) if ids else (2, L // 2, L - 3)


class _EagleHead(nn.Module):
    """What both layouts share: the target's embedding and LM head unless the checkpoint
    brings its own, the KV specs, and checkpoint loading."""

    #: Tensors that no parameter of ours stands for (EAGLE-3's target-to-draft table).
    IGNORED_TENSORS: tuple[str, ...] = ()

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        self.config = cfg
        self.dtype = ctx.dtype
        self.embed_tokens: Optional[VocabParallelEmbedding] = None
        self._target_embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    @classmethod
    def build_context_flags(cls, cfg: dict[str, Any]) -> dict[str, bool]:
        return {"qkv_bias": bool(cfg.get("attention_bias", False)), "qk_norm": False}

    def share_target(self, target: nn.Module) -> None:
        """Use the target's embedding where the checkpoint has none."""
        if self.embed_tokens is None:
            self._target_embed = getattr(target, "embed_input_ids", None)
            if self._target_embed is None:
                raise ValueError(f"the EAGLE head has no embed_tokens and the target "
                                 f"{type(target).__name__} shares none (embed_input_ids)")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens is not None:
            return self.embed_tokens(input_ids)
        return self._target_embed(input_ids)

    def attention_layers(self) -> list[LlamaAttention]:
        return [m for m in self.modules() if isinstance(m, LlamaAttention)]

    def cache_specs(self, block_size: int) -> list[CacheSpec]:
        return [attn.cache_spec(block_size) for attn in self.attention_layers()]

    def _own_table(self, cls: type, tensor: torch.Tensor) -> VocabParallelEmbedding:
        """An embedding-shaped table the checkpoint turned out to carry."""
        with torch.device(self.fc.weight.device):
            table = cls(tensor.shape[0], tensor.shape[1], self.dtype)
        table.weight_loader(table.weight, tensor)
        return table

    def _load_optional(self, name: str, tensor: torch.Tensor) -> bool:
        """Adopt a tensor the checkpoint may or may not have; False if ``name`` is not one."""
        if name == "embed_tokens.weight":
            self.embed_tokens = self._own_table(VocabParallelEmbedding, tensor)
            return True
        return False

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint names with or without the ``model.`` prefix."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb.inv_freq" in name or name in self.IGNORED_TENSORS:
                continue
            if self._load_optional(name, tensor):
                loaded.add(name)
            else:
                loaded.add(load_checkpoint_tensor(params, name, tensor))
        return loaded


class EagleLlamaForCausalLM(_EagleHead):
    """EAGLE-1: ``fc(cat(embed(token p+1), h_p))`` through Llama decoder layers."""

    #: Some checkpoints keep the first layer's input norm, which EAGLE-1 never applies.
    IGNORED_TENSORS = ("layers.0.input_layernorm.weight",)

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__(cfg, ctx)
        hidden = cfg["hidden_size"]
        self.fc = ReplicatedLinear(2 * hidden, hidden, bias=False, dtype=ctx.dtype,
                                   linear_method=ctx.linear_method)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i, ctx)
                                    for i in range(cfg["num_hidden_layers"]))
        # The first layer reads fc's output as it is (EAGLE-1 has no norm there).
        self.layers[0].input_layernorm = nn.Identity()
        self.lm_head: Optional[ParallelLMHead] = None
        self._target_logits: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def share_target(self, target: nn.Module) -> None:
        super().share_target(target)
        if self.lm_head is None:
            self._target_logits = target.compute_logits

    def project_target(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """The head's hidden-state input from what the target gives (its final states)."""
        return target_hidden

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fctx: ForwardContext,
                features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the state the logits read, the state fed back) per token: the same here."""
        hidden = self.fc(torch.cat([self.embed(input_ids), features], dim=-1))
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, fctx)
        out = hidden + residual
        return out, out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head.compute_logits(hidden)
        return self._target_logits(hidden)

    def draft_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.compute_logits(hidden).argmax(dim=-1)

    def _load_optional(self, name: str, tensor: torch.Tensor) -> bool:
        if name == "lm_head.weight":
            self.lm_head = self._own_table(ParallelLMHead, tensor)
            return True
        if name == "fc.bias":
            self.fc.bias = nn.Parameter(tensor.to(self.fc.weight), requires_grad=False)
            return True
        return super()._load_optional(name, tensor)



class Eagle3MidLayer(nn.Module):
    """The EAGLE-3 decoder layer: attention over ``cat(norm(embedding), norm(hidden))``,
    with the hidden state as the residual."""

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(hidden, eps, ctx.dtype, ctx.ops)
        self.hidden_norm = RMSNorm(hidden, eps, ctx.dtype, ctx.ops)
        self.self_attn = LlamaAttention(cfg, 0, ctx, input_size=2 * hidden)
        self.post_attention_layernorm = RMSNorm(hidden, eps, ctx.dtype, ctx.ops)
        self.mlp = LlamaMLP(cfg, ctx)

    def forward(self, positions: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor,
                fctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        out = self.self_attn(positions, mixed, fctx)
        out, residual = self.post_attention_layernorm(out, hidden)
        return self.mlp(out), residual


class Eagle3LlamaForCausalLM(_EagleHead):
    """EAGLE-3: ``fc`` over three target layers' inputs, one mid layer, its own LM head."""

    IGNORED_TENSORS = ("t2d",)

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        super().__init__(cfg, ctx)
        hidden = cfg["hidden_size"]
        num_aux = len((cfg.get("eagle_config") or {}).get(
            "eagle_aux_hidden_state_layer_ids") or ()) or 3
        target_hidden = cfg.get("target_hidden_size") or hidden
        self.fc = ReplicatedLinear(num_aux * target_hidden, hidden, bias=False,
                                   dtype=ctx.dtype, linear_method=ctx.linear_method)
        self.midlayer = Eagle3MidLayer(cfg, ctx)
        self.norm = RMSNorm(hidden, cfg["rms_norm_eps"], ctx.dtype, ctx.ops)
        self.draft_vocab_size = int(cfg.get("draft_vocab_size") or cfg["vocab_size"])
        self.lm_head = ParallelLMHead(self.draft_vocab_size, hidden, ctx.dtype)
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size, dtype=torch.long))

    def project_target(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """The head's hidden-state input from the target layers' inputs, side by side."""
        return self.fc(target_hidden)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fctx: ForwardContext,
                features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the normed state the logits read, the state before ``norm``, fed back)."""
        hidden, residual = self.midlayer(positions, self.embed(input_ids), features, fctx)
        return self.norm(hidden, residual)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary."""
        return self.lm_head.compute_logits(hidden)

    def draft_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        draft = self.compute_logits(hidden).argmax(dim=-1)
        return draft + self.d2t[draft]

    def _load_optional(self, name: str, tensor: torch.Tensor) -> bool:
        if name == "d2t":
            self.d2t.copy_(tensor)
            self._has_d2t = True
            return True
        return super()._load_optional(name, tensor)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        self._has_d2t = False
        loaded = super().load_weights(weights)
        if not self._has_d2t and self.draft_vocab_size != self.config["vocab_size"]:
            raise ValueError(f"the EAGLE-3 head has a draft vocabulary of "
                             f"{self.draft_vocab_size} tokens but no d2t table")
        return loaded
