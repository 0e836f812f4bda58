"""Structured-output token bitmask, applied to the logits in place in one launch, as
``llmserve.layers.ops.torch_apply_token_bitmask`` does.

Bit ``j`` of word ``w`` of a mask row set means token ``32 * w + j`` is allowed. The grid is
(mask row, vocab block of ``BLOCK`` tokens); each program reads its block of the named logits
row and of the mask, and writes the block back with -inf where a bit is 0. Tokens past the
vocabulary (the tail of the last word and of the last block) are masked off, whatever their
bits say, so neither their logits nor anything past the row is touched.

Why the allowed logits are read and written back unchanged rather than left out of a
predicated store: on an H200, for 64 rows of a 151,936-token vocabulary in bf16, the best
store-only kernel tried (``[words, 32]`` tiles of the expanded bits; 16 words, 4 warps) took
12.6 µs of device time against 7.7 µs for this read-modify-write. Stores predicated element
by element cannot be vectorised, and they leave most 32-byte sectors partly written, which
the memory system most likely completes with a read of its own, so the read skipped in the
kernel is not saved. In fp32 the best store-only tile was about 10% faster (14.5 against 16.2 µs); one
kernel for every dtype is worth that. The mask is read as a gather of ``tokens // 32``: the
lanes that read the same word share one access.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve_triton.kernels.common import AotSpec, check_float, next_power_of_2, ptr
from llmserve_triton.tuning import DEFAULT_TUNING, KernelTuning

BITS_PER_WORD = 32
#: Tokens one program covers at most (64 mask words): 75 programs per row of a 152K
#: vocabulary. Blocks of 1,024 to 4,096 tokens, 4 or 8 warps, were within 7% on an H200.
MAX_BLOCK = 2048


@triton.jit
def apply_token_bitmask_kernel(
    logits_ptr, bitmask_ptr, rows_ptr, stride_logits, stride_bitmask, vocab_size,
    BLOCK: tl.constexpr,
):
    mask_row = tl.program_id(0).to(tl.int64)
    tokens = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_vocab = tokens < vocab_size
    words = tl.load(bitmask_ptr + mask_row * stride_bitmask + tokens // 32, mask=in_vocab,
                    other=-1)
    allowed = ((words >> (tokens % 32)) & 1) != 0
    row = logits_ptr + tl.load(rows_ptr + mask_row) * stride_logits + tokens
    logits = tl.load(row, mask=in_vocab)
    neg_inf = tl.full([BLOCK], float("-inf"), logits.dtype)
    tl.store(row, tl.where(allowed, logits, neg_inf), mask=in_vocab)


def _block(vocab_size: int) -> int:
    return min(MAX_BLOCK, max(BITS_PER_WORD, next_power_of_2(vocab_size)))


def _num_warps(block: int, tuning: KernelTuning) -> int:
    return tuning.warps(128 if block >= 1024 else 32)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor, *,
                        tuning: KernelTuning = DEFAULT_TUNING) -> None:
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
    block = _block(vocab_size)
    apply_token_bitmask_kernel[(num_rows, triton.cdiv(vocab_size, block))](
        logits, bitmask, rows, logits.stride(0), bitmask.stride(0), vocab_size,
        BLOCK=block, num_warps=_num_warps(block, tuning))


def aot_specs(dtype: torch.dtype, tuning: KernelTuning = DEFAULT_TUNING) -> list[AotSpec]:
    types = {"logits_ptr": ptr(dtype), "bitmask_ptr": "*i32", "rows_ptr": "*i64",
             "stride_logits": "i32", "stride_bitmask": "i32", "vocab_size": "i32"}
    return [AotSpec(apply_token_bitmask_kernel, types, {"BLOCK": _block(v)},
                    num_warps=_num_warps(_block(v), tuning), label=f"vocab{v}")
            for v in (151936, 1000, 37)]
