"""The whole engine with the Triton backend (interpreted) against the torch backend: same
greedy tokens and log-probabilities on tiny fp32 models, through chunked prefill, prefix-cache
hits, mixed prefill/decode steps and sliding-window attention."""

from __future__ import annotations

import random

import llmserve_triton.plugin
import pytest
from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
from llmserve.plugin_testing import fresh_plugin_manager
from llmserve.plugins import hookimpl, register_plugin
from llmserve.sampling_params import SamplingParams
from llmserve.testing import make_tiny_model


class _ChooseBackend:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def llmserve_select_attention_backend(self, platform_name, model_arch):
        return self.name


def _generate(model_dir: str, backend: str, waves: list[list[list[int]]],
              sliding_window: int | None = None, num_blocks: int | None = None):
    """Greedy completions of each wave of prompts, a wave starting when the last one ends.
    ``sliding_window``: the window every attention layer of the model must have;
    ``num_blocks``: KV cache blocks (default: the CPU platform's budget)."""
    pm = fresh_plugin_manager()
    register_plugin(pm, llmserve_triton.plugin, "triton")
    register_plugin(pm, _ChooseBackend(backend), "choose")
    engine = LLMEngine(EngineArgs(model=model_dir, dtype="float32", device="cpu",
                                  max_num_batched_tokens=24, block_size=16,
                                  num_gpu_blocks_override=num_blocks,
                                  skip_tokenizer_init=True), pm)
    assert engine.core.runner.attn_backend.name == backend
    backends = [layer.attn for layer in engine.core.runner.model.attention_layers()]
    assert backends and all(b.sliding_window == sliding_window for b in backends)
    assert engine.core.kv_manager.retention.window == sliding_window
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
    results = []
    for wave in waves:
        for i, p in enumerate(wave):
            engine.add_request(str(len(results) + i), p, params)
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
        results += [done[str(len(results) + i)] for i in range(len(wave))]
    return results


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_engine_greedy_matches_torch_backend(arch, tmp_path, bpe_tokenizer):
    # Llama: head_dim 16, llama3 RoPE scaling; Qwen3: head_dim 24 (padded to 32), q/k norms.
    model_dir = str(make_tiny_model(tmp_path / arch, arch, tokenizer=bpe_tokenizer, seed=3))
    rng = random.Random(0)
    shared = [rng.randrange(4, 500) for _ in range(33)]
    prompts = [[rng.randrange(4, 500) for _ in range(n)] for n in (1, 5, 17, 40)]
    # Wave 2 reuses the blocks wave 1 cached for ``shared``: attention then starts a prompt
    # with a cached context.
    waves = [prompts + [shared + [7, 8]], [shared + [9]]]
    expected = _generate(model_dir, "torch", waves)
    actual = _generate(model_dir, "triton", waves)
    assert expected[-1].num_cached_tokens == actual[-1].num_cached_tokens == 32
    _assert_same_outputs(expected, actual)


def _assert_same_outputs(expected, actual):
    for exp, act in zip((e.outputs[0] for e in expected), (a.outputs[0] for a in actual)):
        assert act.token_ids == exp.token_ids
        for exp_pos, act_pos in zip(exp.logprobs, act.logprobs):
            assert exp_pos.keys() == act_pos.keys()
            for tok in exp_pos:
                assert act_pos[tok].logprob == pytest.approx(exp_pos[tok].logprob, abs=1e-4)


def test_engine_sliding_window_matches_torch_backend(tmp_path, bpe_tokenizer):
    # Mistral-style: every layer windowed to 24 tokens over blocks of 16, so the window starts
    # mid-block; prompts up to 100 tokens arrive in chunks of at most 24 and then decode.
    # Six blocks of cache cannot hold the longest request (106 tokens, 7 blocks) under full
    # attention: it finishes only because blocks behind the window are freed, and they are
    # handed to the other requests (and freed entries of the block table point at block 0,
    # another request's), so a kernel reading behind the window would read their K/V.
    window = 24
    model_dir = str(make_tiny_model(tmp_path / "mistral", "MistralForCausalLM",
                                    tokenizer=bpe_tokenizer, seed=5, sliding_window=window))
    rng = random.Random(1)
    waves = [[[rng.randrange(4, 500) for _ in range(n)] for n in (3, 30, 47, 100)]]
    expected = _generate(model_dir, "torch", waves, sliding_window=window, num_blocks=6)
    actual = _generate(model_dir, "triton", waves, sliding_window=window, num_blocks=6)
    _assert_same_outputs(expected, actual)
    # The window matters on these prompts: full attention gives other log-probabilities.
    full_dir = str(make_tiny_model(tmp_path / "mistral-full", "MistralForCausalLM",
                                   tokenizer=bpe_tokenizer, seed=5))
    full = _generate(full_dir, "torch", waves)
    assert full[-1].outputs[0].logprobs != expected[-1].outputs[0].logprobs
