"""``TritonPagedAttention``: the paged-attention backend built on the Triton kernels.

Per layer and step: ``reshape_and_cache`` writes the new tokens' K/V through
``slot_mapping``, then one ``paged_attention`` launch covers every sequence of the flat batch
(prefill chunks and decode tokens alike), plus a small reduction launch when the step's
split-KV plan cuts long contexts across programs. Sliding-window layers pass their window to
the kernel, which reads only the blocks inside it (blocks behind it may already belong to
another request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from llmserve.attention.backend import AttentionBackend, AttentionMetadata

from llmserve_triton.kernels.attention import (
    attention_config,
    check_sliding_window,
    default_target_programs,
    padded_head_dim,
    paged_attention,
    plan_num_splits,
)
from llmserve_triton.kernels.cache import reshape_and_cache
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning


@dataclass
class _StepState:
    target_programs: int
    tuning: KernelTuning
    #: (num_kv_heads, queries per kv head, head_dim, sliding_window) -> split factor; layers
    #: of one model share a shape, so the plan is computed once per step and kind of layer.
    num_splits: dict[tuple[int, int, int, int | None], int] = field(default_factory=dict)


class TritonPagedAttention(AttentionBackend):
    name = "triton"
    supports_sliding_window = True

    #: Programs the split-KV planner aims for; ``None``: two per SM on a GPU, never split on
    #: CPU. A platform plugin (or a test) may set it on a subclass.
    target_programs: ClassVar[int | None] = None

    @classmethod
    def kernel_tuning(cls) -> KernelTuning:
        """The launch configuration of this backend's kernels. A platform plugin whose
        hardware wants another contributes a subclass that answers with its own (read once
        per step, so it may depend on the device found at start-up)."""
        return DEFAULT_TUNING

    def __init__(self, num_heads: int, head_dim: int, num_kv_heads: int, scale: float,
                 sliding_window: int | None = None) -> None:
        super().__init__(num_heads, head_dim, num_kv_heads, scale, sliding_window)
        check_sliding_window(sliding_window)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads "
                             f"{num_kv_heads}")
        padded_head_dim(head_dim)  # raises for unsupported sizes at model build, not mid-step

    @staticmethod
    def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                       head_dim: int) -> tuple[int, ...]:
        """The core's layout: each token's K (and V) for all KV heads is one contiguous
        row, so ``reshape_and_cache`` writes one row per token and the attention kernel reads
        a key tile as ``TILE_N`` rows of ``head_dim`` contiguous elements."""
        return (2, num_blocks, block_size, num_kv_heads, head_dim)

    @classmethod
    def prepare(cls, md: AttentionMetadata) -> None:
        target = cls.target_programs
        if target is None:
            target = default_target_programs(md.query_start_loc.device)
        md.backend_state = _StepState(target, cls.kernel_tuning())

    def _step_state(self, md: AttentionMetadata) -> _StepState:
        if not isinstance(md.backend_state, _StepState):
            type(self).prepare(md)
        return md.backend_state

    def _num_splits(self, md: AttentionMetadata) -> int:
        st = self._step_state(md)
        qpk = self.num_heads // self.num_kv_heads
        key = (self.num_kv_heads, qpk, self.head_dim, self.sliding_window)
        splits = st.num_splits.get(key)
        if splits is None:
            cfg = attention_config(md.max_query_len, qpk, self.head_dim, st.tuning)
            splits = st.num_splits[key] = plan_num_splits(
                md.num_tokens, md.num_seqs, md.max_seq_len, self.num_kv_heads, cfg,
                st.target_programs, self.sliding_window)
        return splits

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        if k.stride(-1) != 1:
            k = k.contiguous()
        if v.stride(-1) != 1:
            v = v.contiguous()
        if q.stride(-1) != 1:
            q = q.contiguous()
        tuning = self._step_state(md).tuning
        reshape_and_cache(k, v, key_cache, value_cache, md.slot_mapping, tuning=tuning)
        return paged_attention(
            q, key_cache, value_cache, md.block_tables, md.seq_lens, md.query_start_loc,
            max_query_len=md.max_query_len, max_seq_len=md.max_seq_len, scale=self.scale,
            sliding_window=self.sliding_window, num_splits=self._num_splits(md),
            tuning=tuning)
