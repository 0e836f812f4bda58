"""Asynchronous scheduling (step N+1 scheduled and launched before step N's tokens are read
back) must produce exactly what synchronous stepping produces."""

from __future__ import annotations

import pytest

from llmserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def engines(tiny_models):
    path = tiny_models["Qwen2ForCausalLM"]
    return (LLM(path, dtype="float32", max_model_len=256),
            LLM(path, dtype="float32", max_model_len=256, async_scheduling=True))


MIXED = [
    SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
    SamplingParams(temperature=0.9, top_p=0.9, seed=11, max_tokens=25, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=1, ignore_eos=True),
    SamplingParams(temperature=1.0, top_k=20, seed=5, max_tokens=12, logprobs=3,
                   ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=16, repetition_penalty=1.5,
                   frequency_penalty=0.5, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=16, min_tokens=10, ignore_eos=True),
    SamplingParams(n=2, temperature=0.8, seed=3, max_tokens=9, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=30, prompt_logprobs=2, ignore_eos=True),
]


def test_mixed_batch_matches_synchronous(engines):
    sync, asyn = engines
    prompts = [f"prompt number {i} with some words" * (1 + i % 3) for i in range(len(MIXED))]
    a = sync.generate(prompts, MIXED, use_tqdm=False)
    b = asyn.generate(prompts, MIXED, use_tqdm=False)
    for x, y in zip(a, b):
        assert [c.token_ids for c in x.outputs] == [c.token_ids for c in y.outputs]
        assert [c.text for c in x.outputs] == [c.text for c in y.outputs]
        assert [c.finish_reason for c in x.outputs] == [c.finish_reason for c in y.outputs]
        for cx, cy in zip(x.outputs, y.outputs):
            if cx.logprobs is not None:
                assert [sorted(p) for p in cx.logprobs] == [sorted(p) for p in cy.logprobs]
        if x.prompt_logprobs is not None:
            assert len(x.prompt_logprobs) == len(y.prompt_logprobs)
            for px, py in zip(x.prompt_logprobs[1:], y.prompt_logprobs[1:]):
                assert sorted(px) == sorted(py)


def test_stops_match_synchronous(engines):
    sync, asyn = engines
    ref = sync.generate("stop here", SamplingParams(temperature=0, max_tokens=20,
                                                    ignore_eos=True), use_tqdm=False)[0]
    text, ids = ref.outputs[0].text, ref.outputs[0].token_ids
    params = [SamplingParams(temperature=0, max_tokens=20, stop=[text[5:8]], ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[ids[6]],
                             ignore_eos=True)]
    a = sync.generate(["stop here"] * 2, params, use_tqdm=False)
    b = asyn.generate(["stop here"] * 2, params, use_tqdm=False)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert x.outputs[0].text == y.outputs[0].text
        assert x.outputs[0].finish_reason == y.outputs[0].finish_reason == "stop"


def test_async_engine_frees_every_block(engines):
    _, asyn = engines
    core = asyn.llm_engine.core
    asyn.generate([f"p{i}" for i in range(20)],
                  SamplingParams(temperature=0, max_tokens=7, ignore_eos=True), use_tqdm=False)
    assert not core.has_unfinished_requests()
    core.kv_manager.reset_prefix_cache()
    assert core.kv_manager.num_free_blocks == core.num_blocks
