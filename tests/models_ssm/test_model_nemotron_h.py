"""NemotronHForCausalLM against HF transformers, fp32, on a tiny random checkpoint.

Layers: Mamba2, attention (no RoPE), squared-ReLU MLP, Mamba2, so cache indices differ from
layer numbers. ``time_step_min`` is high enough that HF's step-size floor binds.
"""

from __future__ import annotations

import pytest
from engine_features import (check_n_and_seeds_reproduce, check_next_turn_hits_decode_snapshot,
                             check_preemption_recomputes_the_same_tokens,
                             check_prefix_hits_match_misses)
from model_testutil import VOCAB, assert_hf_parity, parity_prompts, save_tiny
from transformers import NemotronHConfig, NemotronHForCausalLM


@pytest.fixture(scope="module")
def nemotron_h_dir(tmp_path_factory):
    config = NemotronHConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                             layers_block_type=["linear_attention", "full_attention", "mlp",
                                                "linear_attention"],
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16,
                             conv_kernel=4, chunk_size=16, time_step_min=0.05,
                             max_position_embeddings=512)
    return save_tiny(NemotronHForCausalLM, config, tmp_path_factory.mktemp("nemotron_h"))


def test_hf_parity_mixed_batch(nemotron_h_dir):
    assert_hf_parity(nemotron_h_dir, parity_prompts(), skip_tokenizer_init=True)


def test_hf_parity_forced_chunked_prefill(nemotron_h_dir):
    # 24-token budget: the 64- and 100-token prompts run in chunks across steps, sharing
    # steps with other prompts' chunks and decodes.
    assert_hf_parity(nemotron_h_dir, parity_prompts((5, 64, 100, 33)),
                     max_num_batched_tokens=24, enable_chunked_prefill=True, max_num_seqs=4,
                     skip_tokenizer_init=True)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_prefix_hits_match_misses(nemotron_h_dir, async_scheduling):
    # A hit needs the attention layers' blocks and the Mamba layers' snapshot of one prefix.
    check_prefix_hits_match_misses(nemotron_h_dir, async_scheduling=async_scheduling,
                                   skip_tokenizer_init=True)


def test_next_turn_hits_decode_snapshot(nemotron_h_dir):
    check_next_turn_hits_decode_snapshot(nemotron_h_dir, skip_tokenizer_init=True)


def test_n_and_seeds_reproduce(nemotron_h_dir):
    check_n_and_seeds_reproduce(nemotron_h_dir, skip_tokenizer_init=True)


def test_preemption_recomputes_the_same_tokens(nemotron_h_dir):
    # Four requests of 73-100 prompt + 24 new tokens in 12 blocks of 16: preemption is certain.
    check_preemption_recomputes_the_same_tokens(nemotron_h_dir, num_blocks=12, skip_tokenizer_init=True)
