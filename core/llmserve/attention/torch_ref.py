"""The torch reference paged-attention backend: the correctness reference on every platform.

It gathers each sequence's K/V through its block table into a padded [seqs, max_len] view
and runs one batched ``scaled_dot_product_attention`` with a causal mask offset by each
sequence's cached context (and, for a windowed layer, by its window). Padding makes it
simple, not fast; the Triton backend is the fast path. Blocks behind a window may hold another
request's K/V by now: they are masked out, and K/V are always finite, so they contribute 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmserve.attention.backend import AttentionBackend, AttentionMetadata


@dataclass
class _StepState:
    query_index: torch.Tensor  # [B, Lq] flat index of each padded query row
    query_valid: torch.Tensor  # [B, Lq] bool
    mask: torch.Tensor  # [B, 1, Lq, S] bool, True where attention is allowed
    num_blocks: int
    query_pos: torch.Tensor  # [B, 1, Lq, 1] absolute position of each padded query row
    key_pos: torch.Tensor  # [S]
    #: sliding window -> mask narrowed to it; layers of one window share it within a step.
    window_masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def mask_for(self, window: int | None) -> torch.Tensor:
        if window is None:
            return self.mask
        mask = self.window_masks.get(window)
        if mask is None:
            mask = self.window_masks[window] = self.mask & (self.key_pos > self.query_pos - window)
        return mask


class TorchPagedAttention(AttentionBackend):
    name = "torch"
    supports_sliding_window = True

    @classmethod
    def prepare(cls, md: AttentionMetadata) -> None:
        device = md.query_start_loc.device
        lq, s = md.max_query_len, md.max_seq_len
        offs = torch.arange(lq, device=device)
        starts = md.query_start_loc[:-1].long()
        valid = offs[None, :] < md.query_lens[:, None]
        index = torch.where(valid, starts[:, None] + offs[None, :], torch.zeros_like(starts)[:, None])
        context = (md.seq_lens - md.query_lens).long()
        keys = torch.arange(s, device=device)
        # Query i of a sequence sits at absolute position context + i and sees keys <= that.
        query_pos = context[:, None, None] + offs[None, :, None]
        mask = keys[None, None, :] <= query_pos
        mask = mask & (keys[None, None, :] < md.seq_lens[:, None, None])
        md.backend_state = _StepState(index, valid, mask.unsqueeze(1), -(-s // md.block_size),
                                      query_pos.unsqueeze(1), keys)

    def forward(self, q, k, v, kv_cache, md: AttentionMetadata):
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        kvh, d = self.num_kv_heads, self.head_dim
        key_cache.view(-1, kvh, d).index_copy_(0, md.slot_mapping, k)
        value_cache.view(-1, kvh, d).index_copy_(0, md.slot_mapping, v)

        st: _StepState = md.backend_state
        b, s = md.num_seqs, md.max_seq_len
        tables = md.block_tables[:, :st.num_blocks].long()
        keys = key_cache[tables].view(b, -1, kvh, d)[:, :s].transpose(1, 2)
        values = value_cache[tables].view(b, -1, kvh, d)[:, :s].transpose(1, 2)
        queries = q[st.query_index].transpose(1, 2)  # [B, H, Lq, D]
        out = F.scaled_dot_product_attention(queries, keys, values,
                                             attn_mask=st.mask_for(self.sliding_window),
                                             scale=self.scale, enable_gqa=self.num_heads != kvh)
        return out.transpose(1, 2)[st.query_valid]
