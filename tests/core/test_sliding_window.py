"""Sliding-window attention end to end: HF parity, and blocks behind the window freed.

Mistral windows every layer; the Qwen2 config windows layers from ``max_window_layers`` on,
so it mixes full and windowed layers in one block table (managed as full attention, the
windowed layers masking). The window (20) is not a multiple of the block size (16), and the
prompts plus 32 new tokens run well past it.
"""

from __future__ import annotations

import pytest

from llmserve import LLM
from llmserve.plugin_testing.hf_parity import (
    assert_greedy_matches,
    greedy_params,
    hf_greedy_reference,
    parity_prompts,
)
from llmserve.testing import make_tiny_model

WINDOW = 20
CONFIGS = {
    "mistral": ("MistralForCausalLM", dict(sliding_window=WINDOW)),
    "qwen2-mixed": ("Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=WINDOW,
                                             max_window_layers=1)),
}
SCENARIOS = {
    "plain": dict(),
    "chunked_prefill": dict(max_num_batched_tokens=24),
    "preemption": dict(num_gpu_blocks_override=12),
    "async_scheduling": dict(async_scheduling=True, max_num_batched_tokens=40),
}


@pytest.fixture(scope="module")
def windowed(tmp_path_factory, bpe_tokenizer):
    root = tmp_path_factory.mktemp("windowed")
    prompts = parity_prompts(len(bpe_tokenizer))
    models = {}
    for name, (arch, overrides) in CONFIGS.items():
        path = str(make_tiny_model(root / name, arch, tokenizer=bpe_tokenizer, seed=7,
                                   **overrides))
        models[name] = (path, hf_greedy_reference(path, prompts))
    return prompts, models


def test_windowed_layers_are_reported(windowed):
    _, models = windowed
    mistral = LLM(models["mistral"][0], dtype="float32", max_model_len=256)
    specs = mistral.llm_engine.core.kv_cache_config.layer_specs
    assert [s.kind for s in specs] == ["sliding_window"] * 2
    assert mistral.llm_engine.core.kv_manager.retention.window == WINDOW
    mixed = LLM(models["qwen2-mixed"][0], dtype="float32", max_model_len=256)
    specs = mixed.llm_engine.core.kv_cache_config.layer_specs
    assert [s.kind for s in specs] == ["full_attention", "sliding_window"]
    assert mixed.llm_engine.core.kv_manager.retention.window is None


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("model", list(CONFIGS))
def test_greedy_matches_hf(model, scenario, windowed):
    prompts, models = windowed
    path, refs = models[model]
    llm = LLM(path, dtype="float32", max_model_len=256, **SCENARIOS[scenario])
    outputs = llm.generate(prompts, greedy_params(), use_tqdm=False)
    for i, out in enumerate(outputs):
        assert out.outputs[0].finish_reason == "length"
        assert_greedy_matches(out.outputs[0], refs[i], f"{model}/{scenario}/prompt{i}")
    if scenario == "preemption":
        assert llm.llm_engine.core.scheduler.num_preemptions > 0


def test_sequence_longer_than_the_cache(windowed, tmp_path, bpe_tokenizer):
    """A windowed model holds only the blocks its window needs, so one request longer than
    the whole cache runs to the end and matches HF; full attention cannot even admit it."""
    prompts, models = windowed
    path = models["mistral"][0]
    prompt = prompts[7]  # 70 tokens
    ref = hf_greedy_reference(path, [prompt], new_tokens=60)[0]
    blocks = 5  # 80 tokens of cache for a 130-token sequence
    llm = LLM(path, dtype="float32", max_model_len=256, num_gpu_blocks_override=blocks,
              max_num_batched_tokens=16)
    out = llm.generate([prompt], greedy_params(new_tokens=60), use_tqdm=False)[0]
    assert_greedy_matches(out.outputs[0], ref, "longer-than-cache")
    kv = llm.llm_engine.core.kv_manager
    assert kv.num_free_blocks == blocks  # everything back once it finished

    full = make_tiny_model(tmp_path / "full", "MistralForCausalLM", tokenizer=bpe_tokenizer,
                           seed=7, sliding_window=None)
    llm = LLM(str(full), dtype="float32", max_model_len=256, num_gpu_blocks_override=blocks,
              max_num_batched_tokens=16)
    out = llm.generate([prompt], greedy_params(new_tokens=60), use_tqdm=False)[0]
    assert out.outputs[0].finish_reason != "length"
    assert len(out.outputs[0].token_ids) < 60
