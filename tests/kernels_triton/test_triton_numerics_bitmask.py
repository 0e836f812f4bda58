"""The Triton token-bitmask kernel against the core's torch op, under the Triton interpreter.

A mask has no rounding: every result must equal the reference exactly, down to which entries
are -inf. A second oracle, numpy's little-endian ``unpackbits`` of the int32 words, checks
the bit order independently of the torch reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llmserve.layers.ops import torch_apply_token_bitmask
from llmserve_triton import apply_token_bitmask

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NEG_INF = float("-inf")


def _logits(num_rows: int, vocab: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(num_rows, vocab, generator=g) * 10).to(dtype)


def _random_bitmask(num_rows: int, num_words: int, seed: int) -> torch.Tensor:
    """Words over the whole int32 range, so the sign bit (token 32w+31) is set half the time."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2 ** 31, 2 ** 31, (num_rows, num_words), generator=g,
                         dtype=torch.int64).to(torch.int32)


def _allowed_by_unpackbits(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    words = np.ascontiguousarray(bitmask.numpy().astype("<i4"))
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")
    return torch.from_numpy(bits[:, :vocab].astype(bool))


def _check_against_both_oracles(logits: torch.Tensor, bitmask: torch.Tensor,
                                rows: torch.Tensor) -> torch.Tensor:
    expected = logits.clone()
    torch_apply_token_bitmask(expected, bitmask, rows)
    got = logits.clone()
    assert apply_token_bitmask(got, bitmask, rows) is None
    assert torch.equal(got, expected)

    allowed = _allowed_by_unpackbits(bitmask, logits.shape[1])
    named = torch.zeros(logits.shape[0], dtype=torch.bool)
    named[rows] = True
    assert torch.equal(got[~named], logits[~named])
    masked = got[rows]
    assert torch.equal(masked[allowed], logits[rows][allowed])
    assert bool((masked[~allowed] == NEG_INF).all())
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [37, 1000, 4099])
def test_random_masks_on_shuffled_rows(dtype, vocab):
    num_words = -(-vocab // 32)
    bitmask = _random_bitmask(5, num_words, seed=vocab)
    bitmask[1] = -1  # every token allowed
    bitmask[3] = 0  # every token forbidden
    rows = torch.tensor([6, 0, 4, 2, 7])  # a subset of the 9 logits rows, out of order
    logits = _logits(9, vocab, dtype, seed=vocab + 1)
    got = _check_against_both_oracles(logits, bitmask, rows)
    assert torch.equal(got[0], logits[0])
    assert bool((got[2] == NEG_INF).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [128256, 151936])
def test_full_size_vocabularies(dtype, vocab):
    bitmask = _random_bitmask(3, vocab // 32, seed=vocab)
    bitmask[2, -1] = 0  # the very last tokens forbidden
    _check_against_both_oracles(_logits(4, vocab, dtype, seed=3), bitmask, torch.tensor([3, 0, 1]))


def test_existing_infinities_and_extremes_are_kept_where_allowed():
    vocab = 70
    logits = _logits(2, vocab, torch.float16, seed=5)
    logits[1, :6] = torch.tensor([NEG_INF, float("inf"), 65504.0, -65504.0, 0.0, -0.0])
    bitmask = torch.full((1, 3), -1, dtype=torch.int32)
    bitmask[0, 0] = ~0b10  # token 1 (the +inf) forbidden
    got = _check_against_both_oracles(logits, bitmask, torch.tensor([1]))
    assert got[1, :6].tolist() == [NEG_INF, NEG_INF, 65504.0, -65504.0, 0.0, -0.0]
    assert torch.equal(got[1, 6:], logits[1, 6:])


def test_strided_rows_leave_the_columns_past_the_vocabulary_alone():
    # Logits as a view of a wider buffer; the mask has a spare word whose bits forbid
    # everything, so a store past the vocabulary would show in the buffer's extra columns.
    vocab, pad = 100, 60
    buffer = _logits(3, vocab + pad, torch.float32, seed=6)
    original = buffer.clone()
    logits = buffer[:, :vocab]
    bitmask = _random_bitmask(2, 5, seed=7)
    bitmask[:, 3] &= 0xF  # tokens 96..99 allowed from bits 0..3, bits for 100.. are 0
    bitmask[:, 4] = 0
    rows = torch.tensor([2, 1])
    expected = original[:, :vocab].clone()
    torch_apply_token_bitmask(expected, bitmask, rows)
    apply_token_bitmask(logits, bitmask, rows)
    assert torch.equal(buffer[:, :vocab], expected)
    assert torch.equal(buffer[:, vocab:], original[:, vocab:])


def test_no_rows_is_a_no_op():
    logits = _logits(2, 50, torch.float32, seed=8)
    before = logits.clone()
    apply_token_bitmask(logits, torch.zeros(0, 2, dtype=torch.int32),
                        torch.zeros(0, dtype=torch.int64))
    assert torch.equal(logits, before)


def test_rejects_masks_that_cannot_apply():
    logits = _logits(2, 65, torch.float32, seed=9)
    rows = torch.tensor([0])
    with pytest.raises(ValueError, match="cannot cover 65 tokens"):
        apply_token_bitmask(logits, torch.zeros(1, 2, dtype=torch.int32), rows)
    with pytest.raises(TypeError, match="int32"):
        apply_token_bitmask(logits, torch.zeros(1, 3, dtype=torch.int64), rows)
    with pytest.raises(TypeError, match="int64"):
        apply_token_bitmask(logits, torch.zeros(1, 3, dtype=torch.int32), rows.int())
    with pytest.raises(ValueError, match=r"\[M\]"):
        apply_token_bitmask(logits, torch.zeros(2, 3, dtype=torch.int32), rows)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        apply_token_bitmask(logits.double(), torch.zeros(1, 3, dtype=torch.int32), rows)
