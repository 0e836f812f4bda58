"""Our engine against Hugging Face transformers on the same weights (fp32, CPU).

Method: greedy, 32 new tokens, top-5 logprobs. Token ids must be identical;
where two candidates are within rounding, a divergence is accepted only if each side's token
is in the other's top-5, and comparison stops there. Logprobs agree to 1e-3.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmserve import LLM, SamplingParams
from llmserve.plugin_testing.hf_parity import (
    LOGPROB_TOL,
    assert_greedy_matches as assert_matches,
    greedy_params,
    hf_greedy_reference as hf_reference,
    parity_prompts as make_prompts,
)
from llmserve.testing import TINY_ARCHITECTURES as ARCHITECTURES

@pytest.fixture(scope="module")
def references(tiny_models, bpe_tokenizer):
    prompts = make_prompts(len(bpe_tokenizer))
    return prompts, {arch: hf_reference(path, prompts) for arch, path in tiny_models.items()}


GREEDY = greedy_params()

SCENARIOS = {
    "plain": dict(),
    "chunked_prefill": dict(max_num_batched_tokens=24),
    "preemption": dict(num_gpu_blocks_override=14),
    "no_prefix_caching": dict(enable_prefix_caching=False, max_num_seqs=3),
    "async_scheduling": dict(async_scheduling=True, max_num_batched_tokens=40),
    "async_preemption": dict(async_scheduling=True, num_gpu_blocks_override=14),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_matches_hf(arch, scenario, tiny_models, references):
    prompts, refs = references
    llm = LLM(tiny_models[arch], dtype="float32", max_model_len=256, **SCENARIOS[scenario])
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    for i, out in enumerate(outputs):
        assert out.prompt_token_ids == prompts[i]
        assert out.finished and out.outputs[0].finish_reason == "length"
        assert_matches(out.outputs[0], refs[arch][i], f"{arch}/{scenario}/prompt{i}")
    sched = llm.llm_engine.core.scheduler
    if scenario in ("preemption", "async_preemption"):
        assert sched.num_preemptions > 0, "the tiny cache should have forced preemption"
    if scenario == "plain":
        # The two prompts sharing a 40-token prefix: the later one hits two cached blocks.
        assert max(o.num_cached_tokens for o in outputs[-2:]) >= 32


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_prefix_cache_hits_second_pass(arch, tiny_models, references):
    """Running the same batch again is served largely from the prefix cache, same tokens."""
    prompts, refs = references
    llm = LLM(tiny_models[arch], dtype="float32", max_model_len=256)
    llm.generate(prompts, GREEDY, use_tqdm=False)
    again = llm.generate(prompts, GREEDY, use_tqdm=False)
    for i, out in enumerate(again):
        assert_matches(out.outputs[0], refs[arch][i], f"{arch}/second-pass/prompt{i}")
        assert out.num_cached_tokens == (len(prompts[i]) - 1) // 16 * 16
    stats = llm.llm_engine.core.stats()
    assert stats["prefix_cache_hits"] > 0


def test_n_greater_than_one_greedy(tiny_models, references):
    prompts, refs = references
    llm = LLM(tiny_models["LlamaForCausalLM"], dtype="float32", max_model_len=256)
    params = GREEDY.model_copy(update={"n": 3})
    outputs = llm.generate(prompts[:4], params, use_tqdm=False)
    for i, out in enumerate(outputs):
        assert [c.index for c in out.outputs] == [0, 1, 2]
        for c in out.outputs:
            assert_matches(c, refs["LlamaForCausalLM"][i], f"n=3/prompt{i}/child{c.index}")


def test_prompt_logprobs_match_hf(tiny_models):
    path = tiny_models["Qwen3ForCausalLM"]
    prompt = list(range(10, 60))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    llm = LLM(path, dtype="float32", max_model_len=256, max_num_batched_tokens=16)
    out = llm.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=3),
                       use_tqdm=False)[0]
    plp = out.prompt_logprobs
    assert len(plp) == len(prompt) and plp[0] is None
    for pos in range(1, len(prompt)):
        entry = plp[pos]
        expected = ref[pos - 1, prompt[pos]].item()
        assert abs(entry[prompt[pos]].logprob - expected) < LOGPROB_TOL
        top3 = torch.topk(ref[pos - 1], 3)
        for tid, val in zip(top3.indices.tolist(), top3.values.tolist()):
            assert abs(entry[tid].logprob - val) < LOGPROB_TOL
        rank = int((ref[pos - 1] > ref[pos - 1, prompt[pos]]).sum()) + 1
        assert entry[prompt[pos]].rank == rank
