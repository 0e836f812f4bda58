"""Triton RMSNorm, rotary embedding and SiLU-and-mul against the core's torch layers, under
the Triton interpreter."""

from __future__ import annotations

import pytest
import torch
from llmserve.layers.activation import SiluAndMul
from llmserve.layers.norm import RMSNorm
from llmserve.layers.rotary import RotaryEmbedding
from llmserve_triton import rms_norm, rotary, silu_and_mul
from triton_testutil import assert_close, elementwise_tol

DTYPES = [torch.float32, torch.float16]


def _randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [96, 128])
def test_rms_norm(dtype, hidden):
    ref = RMSNorm(hidden, eps=1e-5, dtype=dtype)
    ref.weight.data = _randn(hidden, dtype=dtype, seed=1) + 1
    x = _randn(5, hidden, dtype=dtype, seed=2, scale=3)
    expected = ref(x)
    # The result is normed (|.| ~ a few) times the weight: two ulps of the output.
    tol = elementwise_tol(dtype, expected.abs().max().item())
    assert_close(rms_norm(x, ref.weight, ref.eps), expected, *tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_with_residual_out_of_place_and_in_place(dtype):
    hidden = 80
    ref = RMSNorm(hidden, eps=1e-6, dtype=dtype)
    ref.weight.data = _randn(hidden, dtype=dtype, seed=3) + 1
    x = _randn(2, 3, hidden, dtype=dtype, seed=4)
    residual = _randn(2, 3, hidden, dtype=dtype, seed=5)
    expected, expected_res = ref(x, residual)
    tol = elementwise_tol(dtype, expected.abs().max().item())

    out, new_res = rms_norm(x, ref.weight, ref.eps, residual)
    assert_close(out, expected, *tol)
    # x + residual is rounded exactly as the reference rounds it.
    assert torch.equal(new_res, expected_res)

    x2, res2 = x.clone(), residual.clone()
    out2, new_res2 = rms_norm(x2, ref.weight, ref.eps, res2, out=x2, residual_out=res2)
    assert out2.data_ptr() == x2.data_ptr() and new_res2.data_ptr() == res2.data_ptr()
    assert_close(x2, expected, *tol)
    assert torch.equal(res2, expected_res)


def test_rms_norm_fp32_weight_promotes_output():
    ref = RMSNorm(64, dtype=torch.float32)
    ref.weight.data = _randn(64, dtype=torch.float32, seed=6)
    x = _randn(3, 64, dtype=torch.float16, seed=7)
    expected = ref(x)
    assert expected.dtype == torch.float32
    assert_close(rms_norm(x, ref.weight, ref.eps), expected, *elementwise_tol(torch.float32, 4))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,rope_params", [
    (64, None),
    (24, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
])
def test_rotary(dtype, head_dim, rope_params):
    rope = RotaryEmbedding(head_dim, max_position=300, theta=10000.0, rope_params=rope_params)
    num_tokens, heads, kv_heads = 6, 6, 2
    q = _randn(num_tokens, heads, head_dim, dtype=dtype, seed=8)
    k = _randn(num_tokens, kv_heads, head_dim, dtype=dtype, seed=9)
    positions = torch.tensor([0, 1, 17, 255, 299, 3])
    exp_q, exp_k = rope(positions, q, k)
    # Each output is a sum of two products of inputs (|.| <= max|x|) with |cos|, |sin| <= 1.
    tol = elementwise_tol(dtype, 2 * max(q.abs().max().item(), k.abs().max().item()))

    got_q, got_k = rotary(positions, q, k, rope.cos_cache, rope.sin_cache)
    assert_close(got_q, exp_q, *tol)
    assert_close(got_k, exp_k, *tol)

    q2, k2 = q.clone(), k.clone()
    rotary(positions, q2, k2, rope.cos_cache, rope.sin_cache, inplace=True)
    assert torch.equal(q2, got_q) and torch.equal(k2, got_k)


def test_rotary_on_non_contiguous_views_of_qkv():
    # The model splits one fused qkv projection: q and k are strided views.
    head_dim, heads, kv_heads, num_tokens = 32, 4, 2, 5
    rope = RotaryEmbedding(head_dim, max_position=64, theta=500000.0)
    qkv = _randn(num_tokens, (heads + 2 * kv_heads) * head_dim, dtype=torch.float32, seed=10)
    q, k, _ = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)
    q, k = q.view(num_tokens, heads, head_dim), k.view(num_tokens, kv_heads, head_dim)
    positions = torch.tensor([4, 9, 0, 63, 31])
    exp_q, exp_k = rope(positions, q, k)
    got_q, got_k = rotary(positions, q, k, rope.cos_cache, rope.sin_cache)
    tol = elementwise_tol(torch.float32, 8.0)
    assert_close(got_q, exp_q, *tol)
    assert_close(got_k, exp_k, *tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 2 * 100), (2, 2, 2 * 1100)])
def test_silu_and_mul(dtype, shape):
    x = _randn(*shape, dtype=dtype, seed=11, scale=3)
    expected = SiluAndMul()(x)
    tol = elementwise_tol(dtype, expected.abs().max().item())
    assert_close(silu_and_mul(x), expected, *tol)
