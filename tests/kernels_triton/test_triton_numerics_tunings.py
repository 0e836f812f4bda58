"""The AMD plugin's kernel tunings (taller and wider attention tiles, wave64 warp counts)
against the torch reference, under the Triton interpreter: the tile shapes change which keys
and queries a program handles, so each must still compute the reference's attention. The
compiler hints (``waves_per_eu``, ...) do not exist here; their compilation is checked in
``test_triton_compile_amd.py``."""

from __future__ import annotations

import pytest
import torch
from llmserve.attention.torch_ref import TorchPagedAttention
from llmserve.layers.ops import TORCH_OPS
from llmserve_amd.tuning import CDNA3, CDNA4
from llmserve_triton.backend import TritonPagedAttention
from llmserve_triton.kernels.attention import attention_config
from llmserve_triton.ops import layer_ops
from triton_testutil import (
    ATTN_TOL,
    assert_close,
    elementwise_tol,
    make_paged_batch,
    poison_behind_window,
    run_backend,
)

TUNINGS = {t.name: t for t in (CDNA3, CDNA4)}
#: A prompt long enough for two 128-row q-blocks, chunks with context, decodes.
LONG_MIXED = [(0, 150), (40, 70), (5, 1), (300, 1), (16, 16), (0, 1), (47, 2)]


def tuned_backend(tuning, target_programs=None):
    return type(f"Tuned{tuning.name}", (TritonPagedAttention,), {
        "kernel_tuning": classmethod(lambda cls: tuning), "target_programs": target_programs})


@pytest.mark.parametrize("tuning", list(TUNINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(8, 2, 64), (14, 2, 64),
                                                             (4, 4, 128), (4, 2, 24)])
def test_tuned_attention_matches_the_reference(tuning, dtype, num_heads, num_kv_heads,
                                               head_dim):
    tuning = TUNINGS[tuning]
    cfg = attention_config(150, num_heads // num_kv_heads, head_dim, tuning)
    assert cfg.block_m == 128 and cfg.tile_n == 64
    batch = make_paged_batch(LONG_MIXED, num_heads, num_kv_heads, head_dim, 16, dtype,
                             seed=head_dim + num_heads)
    expected, ref_cache = run_backend(TorchPagedAttention, batch, num_heads, num_kv_heads,
                                      head_dim)
    actual, cache = run_backend(tuned_backend(tuning), batch, num_heads, num_kv_heads,
                                head_dim)
    assert torch.equal(cache, ref_cache)
    assert_close(actual, expected, *ATTN_TOL[dtype])


@pytest.mark.parametrize("tuning", list(TUNINGS))
def test_tuned_split_kv_decode(tuning):
    seqs = [(500, 1), (130, 1), (45, 1), (0, 1)]
    batch = make_paged_batch(seqs, 8, 2, 64, 16, torch.float32, seed=9)
    expected, _ = run_backend(TorchPagedAttention, batch, 8, 2, 64)
    actual, _ = run_backend(tuned_backend(TUNINGS[tuning], target_programs=64), batch, 8, 2,
                            64)
    assert_close(actual, expected, *ATTN_TOL[torch.float32])


@pytest.mark.parametrize("tuning", list(TUNINGS))
def test_tuned_sliding_window_reads_nothing_behind_it(tuning):
    seqs = [(0, 150), (200, 1), (90, 40), (20, 1)]
    window = 48
    batch = make_paged_batch(seqs, 4, 2, 32, 16, torch.float32, seed=4)
    expected, _ = run_backend(TorchPagedAttention, batch, 4, 2, 32, sliding_window=window)
    assert poison_behind_window(batch.kv_cache, batch.md, window) > 0
    actual, _ = run_backend(tuned_backend(TUNINGS[tuning]), batch, 4, 2, 32,
                            sliding_window=window)
    assert torch.isfinite(actual).all()
    assert_close(actual, expected, *ATTN_TOL[torch.float32])


def test_tuned_layer_ops_match_the_torch_ops():
    table = layer_ops(CDNA3)
    torch.manual_seed(0)
    x, res, w = torch.randn(5, 896), torch.randn(5, 896), torch.randn(896)
    (a, ra), (b, rb) = table.rms_norm(x, w, 1e-6, res), TORCH_OPS.rms_norm(x, w, 1e-6, res)
    assert_close(a, b, *elementwise_tol(torch.float32, float(b.abs().max())))
    assert_close(ra, rb, *elementwise_tol(torch.float32, float(rb.abs().max())))
    g = torch.randn(5, 2 * 600)
    expected = TORCH_OPS.silu_and_mul(g)
    assert_close(table.silu_and_mul(g), expected,
                 *elementwise_tol(torch.float32, float(expected.abs().max())))
