"""Helpers for the Triton numerics tests: random paged batches and dtype-derived tolerances."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from llmserve.attention.backend import AttentionMetadata

#: Attention (accumulated over keys, fp32 accumulators, P rounded to the input dtype for the
#: P@V product in fp16): rtol, atol.
ATTN_TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-3)}


def elementwise_tol(dtype: torch.dtype, magnitude: float) -> tuple[float, float]:
    """Element-wise kernels round once where the reference rounds after each op: allow two
    units in the last place of the result, and of the largest intermediate (``magnitude``)
    for results that cancel."""
    eps = torch.finfo(dtype).eps
    return 2 * eps, 2 * eps * magnitude


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol)


@dataclass
class PagedBatch:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    kv_cache: torch.Tensor  # (2, num_blocks, block_size, KVH, D), context already written
    md: AttentionMetadata


def make_paged_batch(seqs: list[tuple[int, int]], num_heads: int, num_kv_heads: int,
                     head_dim: int, block_size: int, dtype: torch.dtype, seed: int,
                     spare_blocks: int = 3) -> PagedBatch:
    """``seqs``: (cached context length, new tokens) per sequence. Blocks are assigned in a
    shuffled order; every slot not holding a sequence's context is filled with large finite
    garbage, so a kernel that reads past a sequence's length or through the wrong block
    table entry gives wrong numbers."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = [c + n for c, n in seqs]
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    perm = torch.randperm(num_blocks, generator=g)
    max_blocks = max(blocks_per_seq) + 1  # one unused column
    # Unused entries point at real blocks (the reference gathers them before masking).
    block_tables = torch.randint(0, num_blocks, (len(seqs), max_blocks), generator=g)
    kv_cache = (torch.rand(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g)
                * 200 - 100).to(dtype)
    slots, used = [], 0
    for i, ((ctx, new), n_blocks) in enumerate(zip(seqs, blocks_per_seq)):
        block_tables[i, :n_blocks] = perm[used:used + n_blocks]
        used += n_blocks
        for pos in range(ctx):
            blk, off = block_tables[i, pos // block_size], pos % block_size
            kv_cache[:, blk, off] = torch.randn(2, num_kv_heads, head_dim, generator=g).to(dtype)
        slots += [int(block_tables[i, p // block_size]) * block_size + p % block_size
                  for p in range(ctx, ctx + new)]
    query_lens = [n for _, n in seqs]
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, num_heads, head_dim, generator=g).to(dtype)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(dtype)
    qsl = torch.zeros(len(seqs) + 1, dtype=torch.int64)
    qsl[1:] = torch.cumsum(torch.tensor(query_lens), 0)
    md = AttentionMetadata(
        num_tokens=num_tokens, num_seqs=len(seqs), max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), block_size=block_size, query_start_loc=qsl,
        query_lens=torch.tensor(query_lens, dtype=torch.int64),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64), block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64))
    return PagedBatch(q, k, v, kv_cache, md)


def run_backend(backend_cls, batch: PagedBatch, num_heads: int, num_kv_heads: int,
                head_dim: int, sliding_window: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, cache after the step) of one forward on a copy of the batch's cache."""
    cache = batch.kv_cache.clone()
    md = AttentionMetadata(**{f: getattr(batch.md, f) for f in batch.md.__dataclass_fields__
                              if f != "backend_state"})
    backend = backend_cls(num_heads, head_dim, num_kv_heads, head_dim ** -0.5,
                          sliding_window=sliding_window)
    backend_cls.prepare(md)
    out = backend.forward(batch.q, batch.k, batch.v, cache, md)
    return out, cache


def poison_behind_window(kv_cache: torch.Tensor, md: AttentionMetadata,
                         sliding_window: int) -> int:
    """Fill with NaN, in place, every cache slot that no query of this step may see: the
    positions before the window of each sequence's first query. Whole blocks behind the
    window stand for blocks the KV manager has freed and handed to another request; the
    positions before the window inside a live block show whether loads are masked per
    element. A kernel that reads any of them (even to multiply by a zero weight) returns NaN.
    Returns how many slots were poisoned, so a test can check it poisoned something."""
    poisoned = 0
    block_size = kv_cache.shape[2]
    for seq in range(md.num_seqs):
        context = int(md.seq_lens[seq] - md.query_lens[seq])
        window_start = max(0, context - sliding_window + 1)
        for pos in range(window_start):
            block = int(md.block_tables[seq, pos // block_size])
            kv_cache[:, block, pos % block_size] = float("nan")
        poisoned += window_start
    return poisoned
