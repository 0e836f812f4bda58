"""Triton paged attention and reshape_and_cache against the torch reference backend, under
the Triton interpreter (fp32 and fp16; the interpreter mishandles bf16 ``tl.dot``)."""

from __future__ import annotations

import pytest
import torch
from llmserve.attention.torch_ref import TorchPagedAttention
from llmserve_triton.backend import TritonPagedAttention
from llmserve_triton.kernels.attention import (
    MAX_SPLITS,
    attention_config,
    paged_attention,
    plan_num_splits,
)
from llmserve_triton.kernels.cache import reshape_and_cache
from triton_testutil import ATTN_TOL, assert_close, make_paged_batch, run_backend

#: (cached context, new tokens): a prompt from scratch, decodes, a chunk with context, a chunk
#: starting on a block boundary, a one-token prompt, partial last blocks throughout.
MIXED = [(0, 7), (5, 1), (20, 1), (33, 3), (16, 16), (0, 1), (47, 2)]
DTYPES = [torch.float32, torch.float16]


def check_against_reference(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype, seed,
                            backend_cls=TritonPagedAttention):
    batch = make_paged_batch(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype, seed)
    expected, ref_cache = run_backend(TorchPagedAttention, batch, num_heads, num_kv_heads,
                                      head_dim)
    actual, cache = run_backend(backend_cls, batch, num_heads, num_kv_heads, head_dim)
    assert torch.equal(cache, ref_cache), "K/V written to different slots than the reference"
    assert_close(actual, expected, *ATTN_TOL[dtype])
    return batch, actual


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_queries_per_kv", [1, 2, 4])
def test_mixed_prefill_and_decode(dtype, num_queries_per_kv):
    check_against_reference(MIXED, 2 * num_queries_per_kv, 2, 64, 16, dtype,
                            seed=num_queries_per_kv)


@pytest.mark.parametrize("head_dim,dtype", [(128, torch.float16), (128, torch.float32),
                                            (24, torch.float32), (24, torch.float16),
                                            (16, torch.float32)])
def test_head_dims_including_padded(head_dim, dtype):
    check_against_reference(MIXED[:4], 4, 2, head_dim, 16, dtype, seed=head_dim)


def test_queries_per_kv_not_a_power_of_two():
    # 7 query heads per KV head (Qwen2.5-0.5B): two tokens per 16-row tile, row 15 unused.
    check_against_reference(MIXED, 14, 2, 64, 16, torch.float32, seed=7)


@pytest.mark.parametrize("block_size", [8, 64])
def test_other_block_sizes(block_size):
    # 8: one key tile spans several cache blocks; 64: one block spans several tiles.
    check_against_reference([(70, 3), (9, 1), (0, 12)], 4, 2, 32, block_size, torch.float32,
                            seed=block_size)


def test_long_prefill_uses_tall_tiles():
    seqs = [(0, 70), (10, 40), (100, 1)]
    cfg = attention_config(max(n for _, n in seqs), 1, 32)
    assert cfg.block_q == 64  # several q-blocks per sequence, one sequence per q-block
    check_against_reference(seqs, 2, 2, 32, 16, torch.float32, seed=11)


class _SplittingBackend(TritonPagedAttention):
    target_programs = 64


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_kv_decode_batch(dtype):
    seqs = [(130, 1), (300, 1), (45, 1), (0, 1)]
    cfg = attention_config(1, 4, 64)
    splits = plan_num_splits(len(seqs), len(seqs), 301, 2, cfg, _SplittingBackend.target_programs)
    assert splits > 1
    check_against_reference(seqs, 8, 2, 64, 16, dtype, seed=5, backend_cls=_SplittingBackend)


@pytest.mark.parametrize("num_splits", [2, 8])
def test_forced_split_on_mixed_batch_matches_unsplit(num_splits):
    batch = make_paged_batch(MIXED, 4, 2, 32, 16, torch.float32, seed=num_splits)
    expected, cache = run_backend(TorchPagedAttention, batch, 4, 2, 32)
    md = batch.md
    kwargs = {"max_query_len": md.max_query_len, "max_seq_len": md.max_seq_len, "scale": 32 ** -0.5}
    args = (batch.q, cache[0], cache[1], md.block_tables, md.seq_lens, md.query_start_loc)
    unsplit = paged_attention(*args, num_splits=1, **kwargs)
    split = paged_attention(*args, num_splits=num_splits, **kwargs)
    assert_close(split, expected, *ATTN_TOL[torch.float32])
    assert_close(split, unsplit, *ATTN_TOL[torch.float32])


@pytest.mark.parametrize("num_splits", [1, 4])
def test_large_logits_stay_finite(num_splits):
    # Scores around +-1000 (log2 domain): exp2 overflows unless every softmax step, and the
    # split reduction, subtracts the running maximum first.
    batch = make_paged_batch([(60, 1), (3, 5), (100, 1)], 4, 2, 32, 16, torch.float32, seed=3)
    batch.q.mul_(60)
    expected, cache = run_backend(TorchPagedAttention, batch, 4, 2, 32)
    md = batch.md
    actual = paged_attention(batch.q, cache[0], cache[1], md.block_tables, md.seq_lens,
                             md.query_start_loc, max_query_len=md.max_query_len,
                             max_seq_len=md.max_seq_len, scale=32 ** -0.5,
                             num_splits=num_splits)
    assert torch.isfinite(actual).all()
    assert_close(actual, expected, *ATTN_TOL[torch.float32])


def test_plan_num_splits():
    decode = attention_config(1, 4, 128)
    # Llama-3-8B decode, batch 2, 8k context, 132 SMs: far too few programs -> split.
    n = plan_num_splits(2, 2, 8192, 8, decode, 264)
    assert n == MAX_SPLITS
    # Same batch, short context: ranges would be shorter than the minimum -> no split.
    assert plan_num_splits(2, 2, 100, 8, decode, 264) == 1
    # A large batch fills the GPU already.
    assert plan_num_splits(256, 256, 8192, 8, decode, 264) == 1
    # Never on CPU (target 0), always a power of two.
    assert plan_num_splits(1, 1, 8192, 8, decode, 0) == 1
    for tokens in range(1, 40):
        n = plan_num_splits(tokens, tokens, 2000, 2, decode, 264)
        assert n & (n - 1) == 0 and 1 <= n <= MAX_SPLITS


def test_reshape_and_cache_skips_negative_slots():
    kvh, d, bs = 2, 24, 16
    cache = torch.zeros(2, 4, bs, kvh, d)
    k, v = torch.randn(3, kvh, d), torch.randn(3, kvh, d)
    slots = torch.tensor([17, -1, 63])
    reshape_and_cache(k, v, cache[0], cache[1], slots)
    expected = torch.zeros_like(cache)
    for t, s in ((0, 17), (2, 63)):
        expected[0, s // bs, s % bs], expected[1, s // bs, s % bs] = k[t], v[t]
    assert torch.equal(cache, expected)


def test_unsupported_head_dim_raises():
    with pytest.raises(ValueError, match="torch"):
        TritonPagedAttention(4, 512, 2, 512 ** -0.5)
