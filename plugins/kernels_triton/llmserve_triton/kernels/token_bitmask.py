"""Structured-output token bitmask, applied to the logits in place in one launch, as
``llmserve.layers.ops.torch_apply_token_bitmask`` does.

Bit ``j`` of word ``w`` of a mask row set means token ``32 * w + j`` is allowed. The grid is
(mask row, vocab block): a program loads its block's ``BLOCK_WORDS`` words once, expands them
to a ``[BLOCK_WORDS, 32]`` tile of bits, and stores -inf where a bit is 0. The logits are
never read: allowed tokens are left out of the store mask rather than rewritten with their
own value, so the kernel writes only what it forbids. Tokens past the vocabulary (the tail of
the last word and of the last block) are masked off, whatever their bits say.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_triton.kernels.common import AotSpec, check_float, next_power_of_2, ptr

BITS_PER_WORD = 32
#: Tokens one program covers at most: 128 words. A 152K vocabulary is then 38 programs per
#: mask row, enough to fill a GPU from a handful of rows.
MAX_BLOCK = 4096


@triton.jit
def apply_token_bitmask_kernel(
    logits_ptr, bitmask_ptr, rows_ptr, stride_logits, stride_bitmask, vocab_size,
    BLOCK_WORDS: tl.constexpr,
):
    mask_row = tl.program_id(0).to(tl.int64)
    words = tl.program_id(1) * BLOCK_WORDS + tl.arange(0, BLOCK_WORDS)
    bits = tl.arange(0, 32)
    tokens = words[:, None] * 32 + bits[None, :]
    word = tl.load(bitmask_ptr + mask_row * stride_bitmask + words, mask=words * 32 < vocab_size,
                   other=-1)
    forbidden = ((word[:, None] >> bits[None, :]) & 1) == 0
    row = tl.load(rows_ptr + mask_row)
    neg_inf = tl.full([BLOCK_WORDS, 32], float("-inf"), logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + row * stride_logits + tokens, neg_inf,
             mask=forbidden & (tokens < vocab_size))


def _block_words(vocab_size: int) -> int:
    return next_power_of_2(triton.cdiv(min(vocab_size, MAX_BLOCK), BITS_PER_WORD))


def _num_warps(block_words: int) -> int:
    return 4 if block_words >= 32 else 1


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor
                        ) -> None:
    """Set ``logits[rows[i], t]`` to -inf, in place, where bit ``t % 32`` of word ``t // 32`` of
    ``bitmask[i]`` is 0; rows not named are left alone.

    logits: [N, V] float with contiguous rows; bitmask: [M, W] int32 with ``W * 32 >= V``;
    rows: [M] int64, distinct, each in ``[0, N)``, all three on one device. The row indices
    are not checked against ``N`` (that would need a device-to-host read).
    """
    check_float("logits", logits)
    if bitmask.dtype != torch.int32 or rows.dtype != torch.int64:
        raise TypeError(f"bitmask must be int32 and rows int64, got {bitmask.dtype} and "
                        f"{rows.dtype}")
    if logits.dim() != 2 or bitmask.dim() != 2 or rows.shape != bitmask.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)}, bitmask {tuple(bitmask.shape)} and "
                         f"rows {tuple(rows.shape)} are not [N, V], [M, W] and [M]")
    num_rows, vocab_size = bitmask.shape[0], logits.shape[1]
    if bitmask.shape[1] * BITS_PER_WORD < vocab_size:
        raise ValueError(f"bitmask of {bitmask.shape[1]} words cannot cover {vocab_size} tokens")
    if logits.stride(-1) != 1 or bitmask.stride(-1) != 1:
        raise ValueError("logits and bitmask rows must be contiguous")
    if bitmask.device != logits.device or rows.device != logits.device:
        raise ValueError(f"logits ({logits.device}), bitmask ({bitmask.device}) and rows "
                         f"({rows.device}) must be on one device")
    if num_rows == 0 or vocab_size == 0:
        return
    block_words = _block_words(vocab_size)
    grid = (num_rows, triton.cdiv(vocab_size, block_words * BITS_PER_WORD))
    apply_token_bitmask_kernel[grid](
        logits, bitmask, rows, logits.stride(0), bitmask.stride(0), vocab_size,
        BLOCK_WORDS=block_words, num_warps=_num_warps(block_words))


def aot_specs(dtype: torch.dtype) -> list[AotSpec]:
    types = {"logits_ptr": ptr(dtype), "bitmask_ptr": "*i32", "rows_ptr": "*i64",
             "stride_logits": "i32", "stride_bitmask": "i32", "vocab_size": "i32"}
    return [AotSpec(apply_token_bitmask_kernel, types, {"BLOCK_WORDS": _block_words(v)},
                    num_warps=_num_warps(_block_words(v)), label=f"vocab{v}")
            for v in (151936, 1000, 37)]
