"""Paged attention over the flat variable-length batch: prefill chunks and decode tokens in
one launch, GQA-packed, with an optional split over the KV length (flash-decoding).

Work decomposition. Each sequence's queries are cut into q-blocks of ``BLOCK_Q`` tokens; a
program takes one q-block and one KV head and handles all ``NUM_QUERIES_PER_KV`` query heads
of that KV head together, so its query tile has ``BLOCK_M = BLOCK_Q * NUM_QUERIES_PER_KV``
rows (row ``r`` = token ``r // QPK``, head ``r % QPK``) and every K/V tile it loads is used
by all of them. q-blocks of all sequences are numbered in one flat range: sequence ``s``'s
first q-block is ``query_start_loc[s] // BLOCK_Q + s``, an upper bound that needs only host
integers (``num_tokens // BLOCK_Q + num_seqs`` programs along axis 0, no device-to-host
sync). A program finds its sequence by binary search and exits if its q-block is past the
sequence's queries.

A program walks the sequence's keys in tiles of ``TILE_N`` positions, looking each position's
block up in the block table (so ``TILE_N`` need not equal the cache block size), with an
online softmax in base 2 and fp32 accumulation. Query ``i`` of a sequence with ``context``
cached tokens sits at absolute position ``context + i`` and sees keys ``<=`` that; a program
stops at the last key its last query can see.

Sliding window (``SLIDING_WINDOW`` > 0, a compile-time constant: 0 builds exactly the
full-attention kernel). A query at position ``p`` sees keys ``p - SLIDING_WINDOW < k <= p``.
The KV manager returns blocks that fell wholly behind the window to the pool, where other
requests overwrite them, so a program must never touch them: it starts its key loop at the
tile holding its first query's window start (the lowest of its queries) and masks every load
below that start, so neither the block-table entries nor the K/V rows behind it are read.
Keys between that start and a later query's own window start are loaded (they are live for
the first query) and masked out of that query's scores.

Split-KV. When there are too few (q-block, KV head) programs to fill the GPU, typically a
decode batch with long contexts, axis 2 of the grid splits each program's tiles (those of its
window, when windowed) into ``NUM_SPLITS`` contiguous ranges; each writes an unnormalised
partial output with its row max and exp-sum, and ``reduce_splits_kernel`` combines them. A
range can be empty (fewer tiles than splits); it writes max ``-inf`` and sum 0, which the
reduction weighs by 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llmserve_triton.kernels.common import AotSpec, check_float, next_power_of_2, ptr
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning, launch_backend

#: Largest head size the kernels are built for; larger sizes raise ``ValueError``.
MAX_HEAD_DIM = 256
#: Split-KV never cuts a program's keys into more than this many ranges.
MAX_SPLITS = 16
#: ... nor into ranges shorter than this many key tiles.
MIN_TILES_PER_SPLIT = 4


@triton.jit
def _find_seq_idx(query_start_loc_ptr, q_block_idx, num_seqs, BLOCK_Q: tl.constexpr):
    """The last sequence whose first flat q-block index is <= ``q_block_idx``."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block_idx:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def paged_attention_kernel(
    out_ptr, q_ptr, key_cache_ptr, value_cache_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    part_out_ptr, part_max_ptr, part_sum_ptr,
    scale, num_seqs, num_heads,
    stride_q_tok, stride_q_head, stride_o_tok, stride_o_head,
    stride_c_block, stride_c_slot, stride_c_head, stride_bt_seq, block_size,
    NUM_QUERIES_PER_KV: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, IS_FP32: tl.constexpr, SLIDING_WINDOW: tl.constexpr,
):
    q_block_idx = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_seq_idx(query_start_loc_ptr, q_block_idx, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq).to(tl.int32)
    q_len = tl.load(query_start_loc_ptr + seq + 1).to(tl.int32) - q_start
    q_block_local = q_block_idx - (q_start // BLOCK_Q + seq)
    if q_block_local * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq).to(tl.int32)
    context_len = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM_P)
    dim_ok = dims < HEAD_DIM
    q_pos = q_block_local * BLOCK_Q + rows // NUM_QUERIES_PER_KV  # within the sequence's queries
    head = kv_head * NUM_QUERIES_PER_KV + rows % NUM_QUERIES_PER_KV
    row_ok = (rows < BLOCK_Q * NUM_QUERIES_PER_KV) & (q_pos < q_len)
    token = (q_start + q_pos).to(tl.int64)
    q = tl.load(q_ptr + token[:, None] * stride_q_tok + head[:, None] * stride_q_head
                + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    q_abs = context_len + q_pos  # absolute position of each row's query

    # Keys this program needs: up to the last position its last query sees, and with a window
    # from the first position its first query sees.
    last_q = tl.minimum((q_block_local + 1) * BLOCK_Q, q_len) - 1
    kv_len = context_len + last_q + 1
    tile_end = tl.cdiv(kv_len, TILE_N)
    if SLIDING_WINDOW > 0:
        kv_start = tl.maximum(context_len + q_block_local * BLOCK_Q - SLIDING_WINDOW + 1, 0)
        tile_start = kv_start // TILE_N
    else:
        tile_start = 0
    if NUM_SPLITS == 1:
        tile_lo = tile_start
        tile_hi = tile_end
    else:
        per_split = tl.cdiv(tile_end - tile_start, NUM_SPLITS)
        tile_lo = tile_start + split * per_split
        tile_hi = tl.minimum(tile_lo + per_split, tile_end)

    qk_scale = scale * 1.4426950408889634  # log2(e): exp2 below
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    head_off = kv_head.to(tl.int64) * stride_c_head
    for tile in range(tile_lo, tile_hi):
        keys = tile * TILE_N + tl.arange(0, TILE_N)
        if SLIDING_WINDOW > 0:
            key_ok = (keys >= kv_start) & (keys < kv_len)
        else:
            key_ok = keys < kv_len
        block = tl.load(bt_row + keys // block_size, mask=key_ok, other=0).to(tl.int64)
        kv_off = block * stride_c_block + (keys % block_size) * stride_c_slot + head_off
        k = tl.load(key_cache_ptr + kv_off[None, :] + dims[:, None],
                    mask=key_ok[None, :] & dim_ok[:, None], other=0.0)  # [HEAD_DIM_P, TILE_N]
        v = tl.load(value_cache_ptr + kv_off[:, None] + dims[None, :],
                    mask=key_ok[:, None] & dim_ok[None, :], other=0.0)  # [TILE_N, HEAD_DIM_P]
        if IS_FP32:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * qk_scale
        visible = (keys[None, :] <= q_abs[:, None]) & key_ok[None, :]
        if SLIDING_WINDOW > 0:
            visible = visible & (keys[None, :] > q_abs[:, None] - SLIDING_WINDOW)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row that has seen no visible key yet keeps m = -inf; shift by 0 to avoid NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IS_FP32:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + token[:, None] * stride_o_tok + head[:, None] * stride_o_head
                 + dims[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dim_ok[None, :])
    else:
        part = (token * num_heads + head) * NUM_SPLITS + split
        tl.store(part_max_ptr + part, m_i, mask=row_ok)
        tl.store(part_sum_ptr + part, l_i, mask=row_ok)
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM_P + dims[None, :], acc,
                 mask=row_ok[:, None])


@triton.jit
def reduce_splits_kernel(
    out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr,
    num_heads, stride_o_tok, stride_o_head,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    """One program per (token, head): rescale each split's partial to the common max."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM_P)
    part = (token * num_heads + head) * NUM_SPLITS + splits
    m = tl.load(part_max_ptr + part)
    l = tl.load(part_sum_ptr + part)
    m_all = tl.max(m, axis=0)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
    w = tl.math.exp2(m - m_all)  # 0 for splits that saw no key
    denom = tl.sum(w * l, axis=0)
    acc = tl.load(part_out_ptr + part[:, None] * HEAD_DIM_P + dims[None, :])
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(denom == 0.0, 1.0, denom)
    tl.store(out_ptr + token * stride_o_tok + head * stride_o_head + dims,
             out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


@dataclass(frozen=True)
class AttentionConfig:
    """Tile sizes of one launch. ``BLOCK_M`` is at least 16 (``tl.dot``'s minimum on NVIDIA)."""

    block_m: int
    block_q: int
    tile_n: int
    num_warps: int


def attention_config(max_query_len: int, num_queries_per_kv: int, head_dim: int,
                     tuning: KernelTuning = DEFAULT_TUNING) -> AttentionConfig:
    """Decode-like batches (every sequence's queries fit one minimal q-block) get the smallest
    query tile; batches with a prefill chunk get taller tiles so each K/V tile is reused by
    more queries. How tall and how wide is the ``tuning``'s."""
    head_dim_p = padded_head_dim(head_dim)
    base_m = max(16, next_power_of_2(num_queries_per_kv))
    if max_query_len * num_queries_per_kv <= base_m:
        block_m, tile_n = base_m, tuning.decode_tile_n
    else:
        block_m = max(base_m, tuning.prefill_block_m if head_dim_p <= 128
                      else tuning.prefill_block_m_wide_head)
        tile_n = (tuning.prefill_tile_n_narrow_head if head_dim_p <= 64
                  else tuning.prefill_tile_n)
    return AttentionConfig(block_m, block_m // num_queries_per_kv, tile_n,
                           num_warps=tuning.attention_warps_tall if block_m >= 128
                           else tuning.attention_warps)


def padded_head_dim(head_dim: int) -> int:
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} is not supported by the Triton attention "
                         f"kernels (1..{MAX_HEAD_DIM}); use the 'torch' backend")
    return max(16, next_power_of_2(head_dim))


def plan_num_splits(num_tokens: int, num_seqs: int, max_seq_len: int, num_kv_heads: int,
                    config: AttentionConfig, target_programs: int,
                    sliding_window: int | None = None) -> int:
    """How many KV ranges each program's keys are cut into (a power of two, 1 = no split).

    Split only while the un-split grid has fewer than ``target_programs`` programs (about two
    per SM), and never into ranges shorter than ``MIN_TILES_PER_SPLIT`` tiles. A program's keys
    are ``[0, seq_len)``, or with a window at most ``sliding_window + block_q - 1`` of them
    (its first query's window to its last query), so a small window over a long context is
    not split into ranges with nothing to do. The partial buffers hold
    ``num_tokens * num_heads * splits`` rows, and a small grid implies few tokens, so they
    stay small.
    """
    programs = (num_tokens // config.block_q + num_seqs) * num_kv_heads
    if programs >= target_programs:
        return 1
    keys_per_program = max_seq_len
    if sliding_window is not None:
        keys_per_program = min(max_seq_len, sliding_window + config.block_q - 1)
    by_length = triton.cdiv(keys_per_program, config.tile_n) // MIN_TILES_PER_SPLIT
    n = min(MAX_SPLITS, triton.cdiv(target_programs, programs), by_length)
    return 1 if n < 2 else 1 << (n.bit_length() - 1)


@functools.cache
def default_target_programs(device: torch.device) -> int:
    """About two programs per SM/CU on a GPU; 0 (never split) elsewhere."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 0


_DUMMY: dict[torch.device, torch.Tensor] = {}


def _dummy_fp32(device: torch.device) -> torch.Tensor:
    t = _DUMMY.get(device)
    if t is None:
        t = _DUMMY[device] = torch.zeros(1, dtype=torch.float32, device=device)
    return t


def paged_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor, *, max_query_len: int, max_seq_len: int,
                    scale: float, sliding_window: int | None = None,
                    num_splits: int | None = None, target_programs: int | None = None,
                    out: torch.Tensor | None = None,
                    tuning: KernelTuning = DEFAULT_TUNING) -> torch.Tensor:
    """Causal attention of the flat batch's queries over each sequence's paged K/V.

    q: [T, H, D]; key_cache, value_cache: [num_blocks, block_size, KVH, D] (same strides);
    block_tables: [num_seqs, max_blocks]; seq_lens: [num_seqs] (context + new tokens);
    query_start_loc: [num_seqs + 1]. ``max_query_len`` and ``max_seq_len`` are host integers
    (no sync). ``sliding_window``: a query at position p sees keys p - sliding_window < k <= p,
    and nothing behind the window (K/V or block-table entry) is read; ``None`` attends to the
    whole sequence. ``num_splits`` forces a split-KV factor (a power of two); ``None`` plans one
    from ``target_programs`` (default: two per SM on a GPU, never on CPU). ``tuning`` picks
    the launch configuration. Returns [T, H, D] in q's dtype (or writes ``out``). The new
    tokens' K/V must already be in the cache.
    """
    check_float("q", q)
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, cache_head_dim = key_cache.shape
    if cache_head_dim != head_dim or num_heads % num_kv_heads:
        raise ValueError(f"q {tuple(q.shape)} does not fit cache {tuple(key_cache.shape)}")
    if key_cache.stride() != value_cache.stride() or key_cache.dtype != value_cache.dtype:
        raise ValueError("key_cache and value_cache must have the same dtype and strides")
    if q.stride(-1) != 1 or key_cache.stride(-1) != 1 or block_tables.stride(-1) != 1:
        raise ValueError("q, the caches and block_tables must be contiguous in the last dim")
    if key_cache.dtype != q.dtype:
        raise TypeError(f"cache dtype {key_cache.dtype} != q dtype {q.dtype}")
    check_sliding_window(sliding_window)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    qpk = num_heads // num_kv_heads
    cfg = attention_config(max_query_len, qpk, head_dim, tuning)
    if num_splits is None:
        if target_programs is None:
            target_programs = default_target_programs(q.device)
        num_splits = plan_num_splits(num_tokens, num_seqs, max_seq_len, num_kv_heads, cfg,
                                     target_programs, sliding_window)
    if num_splits < 1 or num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two, got {num_splits}")
    head_dim_p = padded_head_dim(head_dim)
    if num_splits > 1:
        part_out = torch.empty(num_tokens, num_heads, num_splits, head_dim_p,
                               dtype=torch.float32, device=q.device)
        part_max = torch.empty(num_tokens, num_heads, num_splits, dtype=torch.float32,
                               device=q.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_out = part_max = part_sum = _dummy_fp32(q.device)
    options = _launch_options(tuning, launch_backend(q.device))
    grid = (num_tokens // cfg.block_q + num_seqs, num_kv_heads, num_splits)
    paged_attention_kernel[grid](
        out, q, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
        part_out, part_max, part_sum,
        scale, num_seqs, num_heads,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        block_size,
        num_warps=cfg.num_warps, **options,
        **_attention_constexprs(cfg, qpk, head_dim, num_splits, q.dtype, sliding_window),
    )
    if num_splits > 1:
        reduce_splits_kernel[(num_tokens, num_heads)](
            out, part_out, part_max, part_sum, num_heads, out.stride(0), out.stride(1),
            num_warps=_reduce_num_warps(head_dim_p, tuning),
            **_reduce_constexprs(head_dim, num_splits),
        )
    return out


def check_sliding_window(sliding_window: int | None) -> None:
    if sliding_window is not None and (isinstance(sliding_window, bool)
                                       or not isinstance(sliding_window, int)
                                       or sliding_window < 1):
        raise ValueError(f"sliding_window must be None or an int >= 1, got {sliding_window!r}")


def _attention_constexprs(cfg: AttentionConfig, qpk: int, head_dim: int, num_splits: int,
                          dtype: torch.dtype, sliding_window: int | None) -> dict:
    """``SLIDING_WINDOW`` 0 is full attention: the windowed code is compiled out."""
    return {"NUM_QUERIES_PER_KV": qpk, "HEAD_DIM": head_dim,
            "HEAD_DIM_P": padded_head_dim(head_dim), "BLOCK_M": cfg.block_m,
            "BLOCK_Q": cfg.block_q, "TILE_N": cfg.tile_n, "NUM_SPLITS": num_splits,
            "IS_FP32": dtype == torch.float32, "SLIDING_WINDOW": sliding_window or 0}


@functools.cache
def _launch_options(tuning: KernelTuning, backend: str | None) -> dict:
    """Built once per (tuning, backend), not per layer and step; None (the interpreter)
    takes no compiler options."""
    return tuning.attention_compile_options(backend) if backend else {}


def _reduce_constexprs(head_dim: int, num_splits: int) -> dict:
    return {"HEAD_DIM": head_dim, "HEAD_DIM_P": padded_head_dim(head_dim),
            "NUM_SPLITS": num_splits}


def _reduce_num_warps(head_dim_p: int, tuning: KernelTuning) -> int:
    return tuning.warps(64 if head_dim_p >= 128 else 32)


#: (num_heads, num_kv_heads, head_dim) of the shapes the compile tests build: Llama-3-8B,
#: Qwen2.5-0.5B (7 queries per KV head), and a padded head size.
AOT_SHAPES = ((32, 8, 128), (14, 2, 64), (4, 4, 24))
#: Windows the compile tests build besides full attention (None): Mistral-7B's.
AOT_SLIDING_WINDOWS = (None, 4096)


def aot_specs(dtype: torch.dtype, tuning: KernelTuning = DEFAULT_TUNING) -> list[AotSpec]:
    """Decode and prefill configs for each shape in ``AOT_SHAPES``, split and unsplit, with
    full attention and each window in ``AOT_SLIDING_WINDOWS``, as ``tuning`` launches them on
    its own backend."""
    options = tuning.attention_compile_options(tuning.backend or "cuda")
    specs = []
    types = {n: "i32" for n in paged_attention_kernel.arg_names}
    types.update(out_ptr=ptr(dtype), q_ptr=ptr(dtype), key_cache_ptr=ptr(dtype),
                 value_cache_ptr=ptr(dtype), block_tables_ptr="*i64", seq_lens_ptr="*i64",
                 query_start_loc_ptr="*i64", part_out_ptr="*fp32", part_max_ptr="*fp32",
                 part_sum_ptr="*fp32", scale="fp32")
    reduce_types = {n: "i32" for n in reduce_splits_kernel.arg_names}
    reduce_types.update(out_ptr=ptr(dtype), part_out_ptr="*fp32", part_max_ptr="*fp32",
                        part_sum_ptr="*fp32")
    for num_heads, num_kv_heads, head_dim in AOT_SHAPES:
        qpk = num_heads // num_kv_heads
        for phase, max_query_len, splits in (("decode", 1, 8), ("prefill", 512, 1)):
            cfg = attention_config(max_query_len, qpk, head_dim, tuning)
            for num_splits in sorted({1, splits}):
                for window in AOT_SLIDING_WINDOWS:
                    specs.append(AotSpec(
                        paged_attention_kernel, types,
                        _attention_constexprs(cfg, qpk, head_dim, num_splits, dtype, window),
                        num_warps=cfg.num_warps, options=options,
                        label=f"h{num_heads}-kvh{num_kv_heads}-d{head_dim}-{phase}"
                              f"-split{num_splits}" + (f"-window{window}" if window else "")))
        specs.append(AotSpec(reduce_splits_kernel, reduce_types, _reduce_constexprs(head_dim, 8),
                             num_warps=_reduce_num_warps(padded_head_dim(head_dim), tuning),
                             label=f"reduce-d{head_dim}-split8"))
    return specs
