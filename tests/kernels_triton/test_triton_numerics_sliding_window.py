"""Sliding-window paged attention under the Triton interpreter against the torch reference
(fp32 and fp16).

Every check also proves the kernel reads nothing behind the window: the Triton backend runs on
a cache whose slots before each sequence's window are NaN (blocks the KV manager may already
have handed to another request, and the dead head of the first live block), while the
reference runs on the clean cache. One stray load, even one weighted by zero, makes the
output NaN.
"""

from __future__ import annotations

import pytest
import torch
from llmserve.attention.torch_ref import TorchPagedAttention
from llmserve_triton.backend import TritonPagedAttention
from llmserve_triton.kernels.attention import attention_config, paged_attention, plan_num_splits
from triton_testutil import (
    ATTN_TOL,
    assert_close,
    make_paged_batch,
    poison_behind_window,
    run_backend,
)

DTYPES = [torch.float32, torch.float16]
#: (cached context, new tokens): a prompt from scratch, decodes, a chunk with context, a chunk
#: starting on a block boundary, a one-token prompt, partial last blocks throughout.
MIXED = [(0, 7), (5, 1), (20, 1), (33, 3), (16, 16), (0, 1), (47, 2)]


class _SplittingBackend(TritonPagedAttention):
    target_programs = 64


def check_windowed(seqs, window, num_heads, num_kv_heads, head_dim, block_size, dtype, seed,
                   backend_cls=TritonPagedAttention):
    """Runs the reference on the clean batch and ``backend_cls`` on the poisoned one; returns
    the reference output and the number of poisoned slots."""
    batch = make_paged_batch(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype, seed)
    expected, ref_cache = run_backend(TorchPagedAttention, batch, num_heads, num_kv_heads,
                                      head_dim, sliding_window=window)
    num_poisoned = poison_behind_window(batch.kv_cache, batch.md, window)
    actual, cache = run_backend(backend_cls, batch, num_heads, num_kv_heads, head_dim,
                                sliding_window=window)
    poison_behind_window(ref_cache, batch.md, window)
    torch.testing.assert_close(cache, ref_cache, rtol=0, atol=0, equal_nan=True,
                               msg="K/V written to different slots than the reference")
    assert torch.isfinite(actual).all(), "the kernel read K/V behind the window"
    assert_close(actual, expected, *ATTN_TOL[dtype])
    return batch, expected, num_poisoned


def full_attention(batch, num_heads, num_kv_heads, head_dim):
    return run_backend(TorchPagedAttention, batch, num_heads, num_kv_heads, head_dim)[0]


#: Decodes over contexts from 3 to 130 tokens, on blocks of 16.
DECODES = [(130, 1), (47, 1), (16, 1), (3, 1), (64, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [1, 5, 16, 24], ids=lambda w: f"window{w}")
def test_decode_windows_within_the_context(window, dtype):
    # 1: a query sees only itself; 5: less than a block; 16: exactly one block; 24: not a
    # multiple of the block size (the window starts mid-block).
    batch, expected, num_poisoned = check_windowed(DECODES, window, 4, 2, 32, 16, dtype,
                                                   seed=window)
    assert num_poisoned > 0
    full = full_attention(batch, 4, 2, 32)
    assert not torch.allclose(expected.float(), full.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_window_longer_than_the_context_is_full_attention(dtype):
    batch, expected, num_poisoned = check_windowed(DECODES + [(0, 9)], 200, 4, 2, 32, 16,
                                                   dtype, seed=2)
    assert num_poisoned == 0
    assert_close(expected, full_attention(batch, 4, 2, 32), *ATTN_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_chunks_spanning_the_window_boundary(dtype):
    # A prompt from scratch longer than the window, and a chunk with cached context whose
    # first queries' windows start in the context and last queries' in the chunk itself.
    seqs = [(0, 40), (20, 30)]
    check_windowed(seqs, 24, 4, 2, 32, 16, dtype, seed=4)


def test_prefill_with_several_q_blocks_skips_tiles_behind_later_blocks():
    # One query head per KV head: q-blocks of 64 tokens. The second q-block of the 70-token
    # chunk starts its key loop past tiles that only the first q-block's queries see.
    seqs = [(10, 70), (100, 1)]
    assert attention_config(70, 1, 32).block_q == 64
    check_windowed(seqs, 20, 2, 2, 32, 16, torch.float32, seed=6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_queries_per_kv", [1, 4, 7])
def test_mixed_prefill_and_decode_with_gqa(dtype, num_queries_per_kv):
    _, _, num_poisoned = check_windowed(MIXED, 12, 2 * num_queries_per_kv, 2, 32, 16, dtype,
                                        seed=num_queries_per_kv)
    assert num_poisoned > 0


@pytest.mark.parametrize("block_size", [8, 64])
def test_other_block_sizes(block_size):
    # 8: the window's first key tile spans several blocks; 64: it starts inside one block.
    check_windowed([(70, 3), (9, 1), (0, 12)], 10, 4, 2, 32, block_size, torch.float32,
                   seed=block_size)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_kv_plan_divides_the_window(dtype):
    seqs = [(600, 1), (300, 1), (45, 1), (0, 1)]
    cfg = attention_config(1, 4, 64)  # block_q 4, key tiles of 32
    target = _SplittingBackend.target_programs
    # 10 programs for a target of 64. The whole 601-key context (19 tiles) would take 4
    # ranges; a 300-key window (303 keys a program, 10 tiles) takes 2, a 200-key one (7
    # tiles) none.
    assert plan_num_splits(4, 4, 601, 2, cfg, target) == 4
    assert plan_num_splits(4, 4, 601, 2, cfg, target, sliding_window=200) == 1
    assert plan_num_splits(4, 4, 601, 2, cfg, target, sliding_window=300) == 2
    check_windowed(seqs, 300, 8, 2, 64, 16, dtype, seed=5, backend_cls=_SplittingBackend)


@pytest.mark.parametrize("num_splits", [2, 8])
def test_forced_splits_with_empty_ranges(num_splits):
    # Window 12 with key tiles of 32: each program walks at most two tiles, so with 8 splits
    # most ranges hold no key; their partials must weigh nothing in the reduction.
    window = 12
    batch = make_paged_batch(MIXED, 4, 2, 32, 16, torch.float32, seed=num_splits)
    expected, cache = run_backend(TorchPagedAttention, batch, 4, 2, 32, sliding_window=window)
    assert poison_behind_window(cache, batch.md, window) > 0
    md = batch.md
    args = (batch.q, cache[0], cache[1], md.block_tables, md.seq_lens, md.query_start_loc)
    kwargs = {"max_query_len": md.max_query_len, "max_seq_len": md.max_seq_len,
              "scale": 32 ** -0.5, "sliding_window": window}
    split = paged_attention(*args, num_splits=num_splits, **kwargs)
    unsplit = paged_attention(*args, num_splits=1, **kwargs)
    assert torch.isfinite(split).all()
    assert_close(split, expected, *ATTN_TOL[torch.float32])
    assert_close(split, unsplit, *ATTN_TOL[torch.float32])


def test_plan_num_splits_counts_window_keys_only():
    decode = attention_config(1, 4, 128)  # 16 rows, 4 queries per KV head: block_q 4
    # Llama-3-8B decode at 8k context on 132 SMs: 16 splits without a window...
    assert plan_num_splits(2, 2, 8192, 8, decode, 264) == 16
    # ... 2 with a 256-key window (259 keys per program, 9 tiles of 32: 2 ranges of >= 4) ...
    assert plan_num_splits(2, 2, 8192, 8, decode, 264, sliding_window=256) == 2
    # ... none with a window of 64 keys, however long the context.
    assert plan_num_splits(2, 2, 8192, 8, decode, 264, sliding_window=64) == 1
    # A window longer than the context changes nothing.
    assert plan_num_splits(2, 2, 2048, 8, decode, 264, sliding_window=4096) == \
        plan_num_splits(2, 2, 2048, 8, decode, 264)


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_bad_window_raises(window):
    with pytest.raises(ValueError, match="sliding_window"):
        TritonPagedAttention(4, 32, 2, 32 ** -0.5, sliding_window=window)


def test_backend_declares_support():
    assert TritonPagedAttention.supports_sliding_window
    assert TritonPagedAttention(4, 32, 2, 1.0, sliding_window=24).sliding_window == 24
