"""BambaForCausalLM against HF transformers, fp32, on a tiny random checkpoint.

Layers 0 and 2 are attention (partial RoPE over half of each head), 1 and 3 Mamba2; every
layer has the gated MLP. ``time_step_limit`` is tight enough that the step-size clamp binds.
"""

from __future__ import annotations

import pytest
from engine_features import (check_n_and_seeds_reproduce, check_next_turn_hits_decode_snapshot,
                             check_preemption_recomputes_the_same_tokens,
                             check_prefix_hits_match_misses)
from model_testutil import VOCAB, assert_hf_parity, parity_prompts, save_tiny
from transformers import BambaConfig, BambaForCausalLM


@pytest.fixture(scope="module")
def bamba_dir(tmp_path_factory):
    config = BambaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, attn_layer_indices=[0, 2], num_attention_heads=4,
                         num_key_value_heads=2, mamba_n_heads=8, mamba_d_head=16,
                         mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4,
                         mamba_chunk_size=16, mamba_expand=2, time_step_limit=(0.05, 1.5),
                         max_position_embeddings=512, tie_word_embeddings=False)
    return save_tiny(BambaForCausalLM, config, tmp_path_factory.mktemp("bamba"))


def test_hf_parity_mixed_batch(bamba_dir):
    assert_hf_parity(bamba_dir, parity_prompts(), skip_tokenizer_init=True)


def test_hf_parity_forced_chunked_prefill(bamba_dir):
    # 24-token budget: the 64- and 100-token prompts run in chunks across steps, sharing
    # steps with other prompts' chunks and decodes.
    assert_hf_parity(bamba_dir, parity_prompts((5, 64, 100, 33)),
                     max_num_batched_tokens=24, enable_chunked_prefill=True, max_num_seqs=4,
                     skip_tokenizer_init=True)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_prefix_hits_match_misses(bamba_dir, async_scheduling):
    # A hit needs the attention layers' blocks and the Mamba layers' snapshot of one prefix.
    check_prefix_hits_match_misses(bamba_dir, async_scheduling=async_scheduling,
                                   skip_tokenizer_init=True)


def test_next_turn_hits_decode_snapshot(bamba_dir):
    check_next_turn_hits_decode_snapshot(bamba_dir, skip_tokenizer_init=True)


def test_n_and_seeds_reproduce(bamba_dir):
    check_n_and_seeds_reproduce(bamba_dir, skip_tokenizer_init=True)


def test_preemption_recomputes_the_same_tokens(bamba_dir):
    # Four requests of 73-100 prompt + 24 new tokens in 12 blocks of 16: preemption is certain.
    check_preemption_recomputes_the_same_tokens(bamba_dir, num_blocks=12, skip_tokenizer_init=True)
