"""NemotronHForCausalLM against HF transformers, fp32, on a tiny random checkpoint.

Layers: Mamba2, attention (no RoPE), squared-ReLU MLP, Mamba2, so cache indices differ from
layer numbers. ``time_step_min`` is high enough that HF's step-size floor binds.
"""

from __future__ import annotations

import pytest
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
