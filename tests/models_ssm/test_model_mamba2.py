"""Mamba2ForCausalLM's state in the KV plan (the architecture-wide tests are in test_models)."""

from __future__ import annotations

import logging

from llmserve import LLM


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
