"""Tensor and pipeline parallelism on the CPU (gloo): the same tokens as one rank.

Method: the tiny fp32 checkpoints, greedy, 16 new tokens; each parallel engine is compared
token for token with a one-rank engine of the same settings. The settings force chunked
prefill and preemption, so the ranks must agree on every scheduler decision's consequences.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from llmserve import LLM, SamplingParams
from llmserve.executor import WorkerDiedError
from llmserve.plugin_testing.hf_parity import parity_prompts
from llmserve.testing import TINY_ARCHITECTURES

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
#: Chunked prefill (24-token budget) and a cache small enough to preempt.
PRESSURE = dict(max_num_batched_tokens=24, num_gpu_blocks_override=14)


def _tokens(llm: LLM, prompts, params=GREEDY) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def prompts(bpe_tokenizer):
    return parity_prompts(len(bpe_tokenizer))


@pytest.fixture(scope="module")
def one_rank(tiny_models, prompts):
    """arch -> the one-rank engine's greedy tokens under PRESSURE."""
    refs = {}
    for arch, path in tiny_models.items():
        llm = LLM(path, dtype="float32", max_model_len=256, **PRESSURE)
        refs[arch] = _tokens(llm, prompts)
        assert llm.llm_engine.core.scheduler.num_preemptions > 0
    return refs


def _parallel(path: str, kv_cache_memory: int = 16 << 20, **kwargs) -> LLM:
    return LLM(path, dtype="float32", max_model_len=256, kv_cache_memory=kv_cache_memory,
               **kwargs)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tensor_parallel_2_matches_one_rank(arch, tiny_models, prompts, one_rank):
    llm = _parallel(tiny_models[arch], tensor_parallel_size=2, **PRESSURE)
    core = llm.llm_engine.core
    assert core.runner is None and len(core.executor.procs) == 2
    assert _tokens(llm, prompts) == one_rank[arch]
    assert core.scheduler.num_preemptions > 0


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_pipeline_parallel_2_matches_one_rank(arch, tiny_models, prompts, one_rank):
    # Qwen2's tiny config ties the LM head to the embedding: every stage holds both.
    llm = _parallel(tiny_models[arch], pipeline_parallel_size=2, **PRESSURE)
    assert _tokens(llm, prompts) == one_rank[arch]


def test_tensor_and_pipeline_parallel_together(tiny_models, prompts, one_rank):
    arch = "MistralForCausalLM"
    llm = _parallel(tiny_models[arch], tensor_parallel_size=2, pipeline_parallel_size=2,
                    **PRESSURE)
    assert len(llm.llm_engine.core.executor.procs) == 4
    assert _tokens(llm, prompts) == one_rank[arch]


def test_async_scheduling_sampling_and_grammars_across_ranks(tiny_models, prompts):
    """Every rank samples for itself: seeded sampling and grammar masks must give every rank
    the same tokens, or the next steps' inputs would differ between ranks."""
    path = tiny_models["LlamaForCausalLM"]
    seeded = [SamplingParams(temperature=1.0, top_p=0.9, seed=7 + i, max_tokens=24,
                             ignore_eos=True) for i in range(len(prompts))]
    choice = SamplingParams(temperature=0.0, max_tokens=16,
                            structured_outputs={"choice": ["yes", "no", "maybe"]})
    settings = dict(async_scheduling=True, max_num_batched_tokens=40)
    one = LLM(path, dtype="float32", max_model_len=256, **settings)
    two = _parallel(path, tensor_parallel_size=2, **settings)
    assert two.llm_engine.config.scheduler.async_scheduling
    assert _tokens(two, prompts, seeded) == _tokens(one, prompts, seeded)
    assert _tokens(two, prompts) == _tokens(one, prompts)
    texts = [o.outputs[0].text for o in two.generate(prompts[:3], choice, use_tqdm=False)]
    assert texts == [o.outputs[0].text for o in one.generate(prompts[:3], choice,
                                                               use_tqdm=False)]
    assert all(t in ("yes", "no", "maybe") for t in texts)


def test_kv_cache_holds_each_ranks_share_of_the_heads(tiny_models):
    """The same bytes per rank hold twice the tokens at TP=2: each rank keeps half the KV
    heads (the tiny configs have 2)."""
    path = tiny_models["LlamaForCausalLM"]
    one = _parallel(path, kv_cache_memory=8 << 20)
    two = _parallel(path, kv_cache_memory=8 << 20, tensor_parallel_size=2)
    assert two.llm_engine.core.num_blocks == 2 * one.llm_engine.core.num_blocks


def test_a_killed_worker_fails_the_engine_within_seconds(tiny_models, prompts):
    llm = _parallel(tiny_models["LlamaForCausalLM"], tensor_parallel_size=2)
    executor = llm.llm_engine.core.executor
    victim = executor.procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match=r"worker rank 1 \(pid \d+\) exited with code -9"):
        llm.generate(prompts, GREEDY, use_tqdm=False)
    assert time.monotonic() - start < 10
    # The surviving rank is stopped too: nothing is left running.
    assert all(p.poll() is not None for p in executor.procs)
    with pytest.raises(WorkerDiedError):
        llm.generate(prompts[:1], GREEDY, use_tqdm=False)


def test_a_bad_setting_found_by_a_worker_is_a_value_error(tiny_models):
    """The tiny models' 4 query heads do not split over 3 ranks: the ranks find out while
    building their layers, and the engine raises their ValueError, with nothing left
    running."""
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size 3"):
        _parallel(tiny_models["LlamaForCausalLM"], tensor_parallel_size=3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tensor_parallel_size=2, distributed_executor_backend="uni"),
     "distributed_executor_backend 'uni' runs one rank"),
    (dict(tensor_parallel_size=0), "tensor_parallel_size"),
    (dict(data_parallel_rank=1), r"data_parallel_rank must be in \[0, 0\]"),
    (dict(data_parallel_size=2), "data_parallel_size=2 applies to `llmserve serve`"),
    (dict(pipeline_parallel_size=3), r"pipeline_parallel_size must be in \[1, 2\]"),
])
def test_bad_parallel_settings_are_named(kwargs, message, tiny_models):
    with pytest.raises(ValueError, match=message):
        _parallel(tiny_models["LlamaForCausalLM"], **kwargs)


def test_speculative_decoding_across_ranks():
    """The draft model is split across the ranks like its target; verification keeps the
    target's greedy tokens."""
    prompts = ["The list type", "Functions are defined with def", "A dictionary maps"]
    spec = {"method": "draft_model", "num_speculative_tokens": 3}
    one = LLM(max_model_len=256)
    two = LLM(max_model_len=256, tensor_parallel_size=2, kv_cache_memory=16 << 20,
              speculative_config=spec)
    assert _tokens(two, prompts) == _tokens(one, prompts)
    stats = two.llm_engine.core.scheduler.make_stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    assert stats["spec_decode_num_accepted_tokens"] > 0
