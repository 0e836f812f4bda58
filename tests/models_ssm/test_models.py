"""Every architecture of the plugin against HF transformers (fp32, tiny random checkpoints),
and the engine features that must keep it exact (``engine_features``)."""

from __future__ import annotations

import pytest
from engine_features import (check_n_and_seeds_reproduce, check_next_turn_hits_decode_snapshot,
                             check_preemption_recomputes_the_same_tokens,
                             check_prefix_hits_match_misses)
from model_testutil import TINY_CHECKPOINTS, assert_hf_parity, parity_prompts

#: The tiny checkpoints carry no tokenizer: requests are token ids.
NO_TOKENIZER = dict(skip_tokenizer_init=True)
SCHEDULING = pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])


def test_hf_parity_mixed_batch(arch_dir):
    assert_hf_parity(arch_dir, parity_prompts(), **NO_TOKENIZER)


def test_hf_parity_forced_chunked_prefill(arch_dir):
    # 24-token budget: the 64- and 100-token prompts run in chunks across steps, sharing
    # steps with other prompts' chunks and decodes.
    assert_hf_parity(arch_dir, parity_prompts((5, 64, 100, 33)), max_num_batched_tokens=24,
                     enable_chunked_prefill=True, max_num_seqs=4, **NO_TOKENIZER)


@SCHEDULING
def test_prefix_hits_match_misses(arch_dir, async_scheduling):
    # On a hybrid a hit needs the attention blocks and the Mamba snapshot of one prefix.
    check_prefix_hits_match_misses(arch_dir, async_scheduling=async_scheduling, **NO_TOKENIZER)


@SCHEDULING
def test_next_turn_hits_decode_snapshot(arch_dir, async_scheduling):
    check_next_turn_hits_decode_snapshot(arch_dir, async_scheduling=async_scheduling,
                                         **NO_TOKENIZER)


def test_n_and_seeds_reproduce(arch_dir):
    check_n_and_seeds_reproduce(arch_dir, **NO_TOKENIZER)


@pytest.mark.parametrize("hybrid", [a for a, (_, paged) in TINY_CHECKPOINTS.items() if paged])
def test_preemption_recomputes_the_same_tokens(hybrid, tiny_dirs):
    # Only models with paged layers can run out of blocks: a pure state model holds one slot
    # per running sequence, which the scheduler never over-commits, so it is never preempted.
    # Four requests of 73-100 prompt + 24 new tokens in 12 blocks of 16: preemption is certain.
    check_preemption_recomputes_the_same_tokens(tiny_dirs(hybrid), num_blocks=12,
                                                **NO_TOKENIZER)
