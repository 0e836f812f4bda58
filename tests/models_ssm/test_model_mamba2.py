"""Mamba2ForCausalLM against HF transformers, fp32, on a tiny random checkpoint."""

from __future__ import annotations

import logging

import pytest
from engine_features import (check_n_and_seeds_reproduce, check_next_turn_hits_decode_snapshot,
                             check_prefix_hits_match_misses)
from llmserve import LLM
from model_testutil import VOCAB, assert_hf_parity, parity_prompts, save_tiny
from transformers import Mamba2Config, Mamba2ForCausalLM


@pytest.fixture(scope="module")
def mamba2_dir(tmp_path_factory):
    config = Mamba2Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_heads=8,
                          head_dim=16, n_groups=2, state_size=16, conv_kernel=4, chunk_size=16,
                          expand=2, tie_word_embeddings=True)
    return save_tiny(Mamba2ForCausalLM, config, tmp_path_factory.mktemp("mamba2"))


def test_hf_parity_mixed_batch(mamba2_dir):
    assert_hf_parity(mamba2_dir, parity_prompts())


def test_hf_parity_forced_chunked_prefill(mamba2_dir):
    # 24-token budget: the 64- and 100-token prompts run in chunks across steps, sharing
    # steps with other prompts' chunks and decodes.
    assert_hf_parity(mamba2_dir, parity_prompts((5, 64, 100, 33)),
                     max_num_batched_tokens=24, enable_chunked_prefill=True, max_num_seqs=4)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_prefix_hits_match_misses(mamba2_dir, async_scheduling):
    check_prefix_hits_match_misses(mamba2_dir, async_scheduling=async_scheduling)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_next_turn_hits_decode_snapshot(mamba2_dir, async_scheduling):
    check_next_turn_hits_decode_snapshot(mamba2_dir, async_scheduling=async_scheduling)


def test_n_and_seeds_reproduce(mamba2_dir):
    check_n_and_seeds_reproduce(mamba2_dir)


def test_state_is_planned_and_logged(mamba2_dir, caplog):
    """Every layer's conv + SSM state per slot and per snapshot, in the plan and the log."""
    with caplog.at_level(logging.INFO, logger="llmserve.engine.core"):
        llm = LLM(mamba2_dir, dtype="float32", max_num_seqs=6)
    plan = llm.llm_engine.core.kv_cache_config
    # Per layer: conv (K-1=3, conv_dim 128 + 2*2*16) + SSM (8 heads, 16, 16), fp32.
    per_row = 2 * (3 * 192 + 8 * 16 * 16) * 4
    assert (plan.num_blocks, plan.num_state_slots, plan.num_state_snapshots) == (0, 6, 6)
    assert plan.total_bytes == 12 * per_row
    assert "6 state slots + 6 prefix snapshots" in caplog.text
    no_cache = LLM(mamba2_dir, dtype="float32", max_num_seqs=6, enable_prefix_caching=False)
    assert no_cache.llm_engine.core.kv_cache_config.num_state_snapshots == 0
