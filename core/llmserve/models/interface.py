"""``CausalLM``: what a model class contributed through ``llmserve_model_architectures`` is.

A ``typing.Protocol`` rather than a base class: a model is a plain ``torch.nn.Module``
composition of shared layers and needs no common ancestor beyond that. The protocol is checked
structurally when the architecture registry is built (``llmserve.plugins.collect_registry``
names every method a contributed class lacks), so a class missing a method is rejected when it
is contributed, not half-way through loading a checkpoint.

How the engine drives a model: ``build_context_flags(cfg)`` is read before construction, the
class is constructed on the target device as ``cls(cfg, ctx)``, ``load_weights`` streams the
checkpoint in, ``cache_specs`` says what each caching layer keeps between steps, and every step
calls the module (its ``forward``) on the flat token batch and ``compute_logits`` on the rows
that sample.

Optional capabilities, looked up with ``getattr`` by the features that need them:
``embed_input_ids(input_ids)`` (token embeddings, shared with draft heads such as EAGLE) and
``supports_aux_hidden_states = True`` (``forward`` appends the inputs of the decoder layers
named by ``ForwardContext.aux_hidden_layers`` to ``ForwardContext.aux_hidden_states``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from llmserve.attention.backend import ForwardContext
    from llmserve.kv_cache.spec import CacheSpec
    from llmserve.models.base import ModelBuildContext


class CausalLM(Protocol):
    """A causal language model over the engine's flat, unpadded token batch.

    Implementations are ``torch.nn.Module`` subclasses: the engine calls the module, reads
    ``named_parameters()`` to check that every weight was loaded, and calls ``eval()``.
    """

    def __init__(self, cfg: dict[str, Any], ctx: ModelBuildContext) -> None:
        """``cfg`` is the checkpoint's ``config.json``; ``ctx`` carries the dtype, the attention
        backend class, the layer ops and the flags from ``build_context_flags``."""

    @classmethod
    def build_context_flags(cls, cfg: dict[str, Any]) -> dict[str, bool]:
        """Architecture switches read off the HF config (``qkv_bias``, ``qk_norm``...), handed
        to the layers through ``ModelBuildContext.flags``; ``{}`` when there are none."""
        ...

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                fctx: ForwardContext) -> torch.Tensor:
        """Hidden states ``[num_tokens, hidden]`` of every token of the flat batch."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of the given hidden-state rows."""
        ...

    def cache_specs(self, block_size: int) -> list[CacheSpec]:
        """One spec per caching layer, in the order of ``ForwardContext.kv_caches``."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (HF names) into parameters; return the parameter names
        loaded, so the loader can name the ones the checkpoint lacks."""
        ...
