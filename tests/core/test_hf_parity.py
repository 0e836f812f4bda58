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
from llmserve.testing import TINY_ARCHITECTURES as ARCHITECTURES

NEW_TOKENS = 32
TOP = 5
LOGPROB_TOL = 1e-3


def make_prompts(vocab_size: int) -> list[list[int]]:
    """Prompts from 1 token to several 16-token blocks long, plus two sharing a prefix."""
    g = torch.Generator().manual_seed(1234)
    lengths = [1, 5, 15, 16, 17, 33, 48, 70]
    prompts = [torch.randint(4, vocab_size, (n,), generator=g).tolist() for n in lengths]
    shared = torch.randint(4, vocab_size, (40,), generator=g).tolist()
    prompts.append(shared + [7, 8, 9])
    prompts.append(shared + [10, 11])
    return prompts


def hf_reference(model_dir: str, prompts: list[list[int]]):
    """Greedy continuation with full-sequence forwards: (token ids, [(topk ids, topk lps)])."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            past = None
            tokens, tops = [], []
            step_input = ids
            for _ in range(NEW_TOKENS):
                out = model(step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                lp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                top = torch.topk(lp, TOP)
                nxt = int(top.indices[0])
                tokens.append(nxt)
                tops.append((top.indices.tolist(), top.values.tolist()))
                step_input = torch.tensor([[nxt]])
            results.append((tokens, tops))
    return results


def assert_matches(ours, reference, label: str) -> None:
    ref_tokens, ref_tops = reference
    assert len(ours.token_ids) == NEW_TOKENS, label
    for t, (tok, ref_tok) in enumerate(zip(ours.token_ids, ref_tokens)):
        our_pos = ours.logprobs[t]
        our_top = sorted(((lp.rank, tid, lp.logprob) for tid, lp in our_pos.items()
                          if lp.rank is not None and lp.rank <= TOP))
        ref_ids, ref_lps = ref_tops[t]
        if tok != ref_tok:
            our_top_ids = [tid for _, tid, _ in our_top]
            assert tok in ref_ids and ref_tok in our_top_ids, (
                f"{label}: token {t} diverged ({tok} vs HF {ref_tok}) beyond a near-tie")
            return
        # Compare the top-5 values position by position (ids may swap only within rounding).
        ours_vals = [lp for _, _, lp in our_top][:TOP]
        assert len(ours_vals) == TOP, f"{label}: token {t} has {len(ours_vals)} top logprobs"
        for a, b in zip(ours_vals, ref_lps):
            assert abs(a - b) < LOGPROB_TOL, f"{label}: token {t} logprob {a} vs HF {b}"
        assert abs(our_pos[tok].logprob - ref_lps[0]) < LOGPROB_TOL, label


@pytest.fixture(scope="module")
def references(tiny_models, bpe_tokenizer):
    prompts = make_prompts(len(bpe_tokenizer))
    return prompts, {arch: hf_reference(path, prompts) for arch, path in tiny_models.items()}


GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=TOP, ignore_eos=True)

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
