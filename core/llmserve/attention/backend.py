"""The contract between the model runner and an attention backend.

The runner flattens all scheduled tokens of all requests into one batch with no padding;
``AttentionMetadata`` says where each sequence's queries start, how long each sequence is
(cached context + new tokens), which cache slot each new token's K/V goes to, and each
sequence's block table. Prefill chunks and decode tokens share one launch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch


@dataclass
class AttentionMetadata:
    num_tokens: int
    num_seqs: int
    max_query_len: int
    max_seq_len: int
    block_size: int
    #: [num_seqs + 1] offsets of each sequence's first query token in the flat batch.
    query_start_loc: torch.Tensor
    #: [num_seqs] new tokens of each sequence in this step.
    query_lens: torch.Tensor
    #: [num_seqs] total tokens of each sequence after this step (context + new).
    seq_lens: torch.Tensor
    #: [num_seqs, max_blocks] block ids; entries past a sequence's length are unused.
    block_tables: torch.Tensor
    #: [num_tokens] flat cache slot (block_id * block_size + offset) of each new token.
    slot_mapping: torch.Tensor
    #: Anything a backend precomputes once per step in ``prepare`` (masks, split plans).
    backend_state: Any = None


@dataclass
class ForwardContext:
    """Everything a forward pass needs besides token ids and positions."""

    attn_metadata: Optional[AttentionMetadata]
    #: One entry per caching layer (``cache_specs()`` order): a paged layer's tensor, shaped
    #: by the backend's ``kv_cache_shape``; a state layer's list of ``[num_state_slots,
    #: *shape]`` tensors.
    kv_caches: list = field(default_factory=list)
    #: [num_seqs] each scheduled sequence's slot in the state layers' tensors; None when the
    #: model has no per-request state layer.
    state_slots: Optional[torch.Tensor] = None
    #: Decoder layers whose input (the residual stream entering layer ``i``) the model
    #: appends to ``aux_hidden_states``, in this order: what a speculative proposer that
    #: reads several layers (EAGLE-3) asks for. Models that can do this set
    #: ``supports_aux_hidden_states = True``.
    aux_hidden_layers: tuple[int, ...] = ()
    aux_hidden_states: list = field(default_factory=list)


class AttentionBackend(ABC):
    """Writes new K/V into the paged cache and computes attention for the flat batch.

    A backend implements ``forward``; it overrides ``kv_cache_shape`` when its cache layout
    differs from the default, ``prepare`` when it precomputes per-step state, and sets
    ``supports_sliding_window`` when its ``forward`` honours ``sliding_window``.
    """

    name: ClassVar[str] = "base"
    #: Whether the backend honours ``sliding_window``; one that does not refuses it at model
    #: build rather than silently attending to the whole sequence.
    supports_sliding_window: ClassVar[bool] = False

    def __init__(self, num_heads: int, head_dim: int, num_kv_heads: int, scale: float,
                 sliding_window: Optional[int] = None) -> None:
        """``sliding_window``: a query at position p sees keys p - sliding_window < k <= p;
        None attends to the whole sequence. Blocks behind the window may have been freed
        and reused by another request by the time the layer runs: a windowed backend must
        give them no weight (skip them, as the Triton kernel does, or mask them out, as the
        torch reference does; their values are finite but not this sequence's)."""
        if sliding_window is not None and not type(self).supports_sliding_window:
            raise ValueError(f"attention backend {type(self).name!r} does not support "
                             f"sliding-window attention (sliding_window={sliding_window})")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.sliding_window = sliding_window

    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                       head_dim: int) -> tuple[int, ...]:
        """Shape of one layer's cache tensor (keys and values together)."""
        return (2, num_blocks, block_size, num_kv_heads, head_dim)

    @classmethod
    def prepare(cls, md: AttentionMetadata) -> None:
        """Called once per step before the forward pass; fills ``md.backend_state``."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        """Write this step's k and v into ``kv_cache`` at ``md.slot_mapping``, then attend.

        q: [T, H, D]; k, v: [T, KVH, D]; returns [T, H, D].
        """
