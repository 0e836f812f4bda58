"""The torch reference paged-attention backend: the correctness reference on every platform.

It gathers each sequence's K/V through its block table into a padded [seqs, max_len] view
and runs one batched ``scaled_dot_product_attention`` with a causal mask offset by each
sequence's cached context. Padding makes it simple, not fast; the Triton backend is the
fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmserve.attention.backend import AttentionBackend, AttentionMetadata


@dataclass
class _StepState:
    query_index: torch.Tensor  # [B, Lq] flat index of each padded query row
    query_valid: torch.Tensor  # [B, Lq] bool
    mask: torch.Tensor  # [B, 1, Lq, S] bool, True where attention is allowed
    num_blocks: int


class TorchPagedAttention(AttentionBackend):
    name = "torch"

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
        mask = keys[None, None, :] <= (context[:, None, None] + offs[None, :, None])
        mask = mask & (keys[None, None, :] < md.seq_lens[:, None, None])
        md.backend_state = _StepState(index, valid, mask.unsqueeze(1),
                                      -(-s // md.block_size))

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
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=st.mask,
                                             scale=self.scale,
                                             enable_gqa=self.num_heads != kvh)
        return out.transpose(1, 2)[st.query_valid]
