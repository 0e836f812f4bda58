"""Every architecture of the plugin against HF transformers (fp32, tiny random checkpoints),
and the engine features that must keep it exact (``engine_features``)."""

from __future__ import annotations

import pytest
from llmserve import LLM, SamplingParams
from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
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


def test_state_slots_come_back_on_finish_and_abort(arch_dir):
    """Every slot is free again once requests finish or are aborted mid-decode, and a new
    request in a reused slot (restoring a snapshot the aborted ones left) decodes as in a
    fresh engine."""
    engine = LLMEngine(EngineArgs(model=arch_dir, dtype="float32", max_num_seqs=3,
                                  **NO_TOKENIZER))
    slots = engine.core.kv_manager.state_slots
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    for i, n in enumerate((7, 30, 12)):
        engine.add_request(f"r{i}", list(range(5, 5 + n)), params)
    for _ in range(4):
        engine.step()
    assert slots.num_free_slots == 0
    engine.abort_request(["r0", "r2"])
    engine.step()
    assert slots.num_free_slots == 2
    while engine.has_unfinished_requests():
        engine.step()
    assert slots.num_free_slots == 3
    fresh = _tokens(arch_dir, [list(range(5, 35))])
    engine.add_request("again", list(range(5, 35)), params)
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [o.outputs[0].token_ids for o in outs if o.finished] == fresh


def _tokens(model_dir: str, prompts) -> list[list[int]]:
    outs = LLM(model_dir, dtype="float32", **NO_TOKENIZER).generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outs]
