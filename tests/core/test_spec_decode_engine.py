"""Speculative decoding through the whole engine: the output is the target's, exactly.

Greedy runs must give the tokens of a run without speculation, whatever the proposer drafts
(the target itself as its draft accepts everything, an unrelated random draft almost nothing,
n-gram lookup something in between). Sampled runs must follow the target's distribution: a
two-sample chi-square test compares thousands of draws with and without speculation.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import pytest
from llmserve import LLM, SamplingParams, hookimpl
from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
from llmserve.spec_decode.proposer import ProposalBatch, Proposer
from llmserve.testing import make_tiny_model

K = 3
#: Upper 0.1% points of chi-square, by degrees of freedom (no scipy here).
CHI2_999 = {dof: crit for dof, crit in [
    (5, 20.515), (10, 29.588), (15, 37.697), (20, 45.315), (25, 52.620), (30, 59.703),
    (35, 66.619), (40, 73.402), (45, 80.077), (50, 86.661), (60, 99.607), (70, 112.317)]}


@pytest.fixture(scope="module")
def target_dir(tiny_models):
    return tiny_models["LlamaForCausalLM"]


@pytest.fixture(scope="module")
def other_draft_dir(tmp_path_factory, bpe_tokenizer):
    """A random model with the target's vocabulary that predicts nothing of the target's."""
    return str(make_tiny_model(tmp_path_factory.mktemp("draft") / "llama", tokenizer=bpe_tokenizer,
                               seed=11, num_hidden_layers=1))


def engine(path, spec=None, **kw):
    kw.setdefault("max_model_len", 256)
    return LLM(path, dtype="float32", speculative_config=spec, **kw)


def greedy(n=24, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def spec_stats(llm) -> dict:
    return llm.llm_engine.core.stats()


#: Prompts of 1 to 60 tokens; the last ones repeat themselves, so n-gram lookup finds drafts.
PROMPTS = [[7], [5, 9, 11, 300], list(range(20, 60)), [40, 41, 42, 43] * 15,
           [100 + i % 7 for i in range(30)]]


@pytest.fixture(scope="module")
def reference(target_dir):
    outs = engine(target_dir).generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(),
                                       use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def run_greedy(llm, params=None):
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params or greedy(),
                        use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_self_draft_accepts_every_draft_and_matches(target_dir, reference):
    """The target as its own draft: every draft is accepted, so the draft's KV cache (same
    block tables, lookahead slots, catch-up after each verification) must be right."""
    llm = engine(target_dir, {"method": "draft_model", "model": target_dir,
                              "num_speculative_tokens": K})
    assert run_greedy(llm) == reference
    stats = spec_stats(llm)
    assert stats["spec_decode_num_drafts"] > 0
    assert stats["spec_decode_num_accepted_tokens"] == stats["spec_decode_num_draft_tokens"]
    per_pos = stats["spec_decode_num_accepted_tokens_per_pos"]
    assert len(per_pos) == K and per_pos[0] == stats["spec_decode_num_drafts"]
    # 24 tokens per prompt: the first from the prefill, then up to K + 1 per step.
    assert stats["spec_decode_num_drafts"] <= len(PROMPTS) * -(-23 // (K + 1)) + len(PROMPTS)
    assert llm.llm_engine.core.kv_manager.usage == 0.0


@pytest.mark.parametrize("method", ["unrelated draft", "ngram"])
def test_greedy_output_is_the_target_s(target_dir, other_draft_dir, reference, method):
    spec = ({"method": "draft_model", "model": other_draft_dir, "num_speculative_tokens": K}
            if method != "ngram" else
            {"method": "ngram", "num_speculative_tokens": K, "prompt_lookup_max": 3})
    llm = engine(target_dir, spec)
    assert run_greedy(llm) == reference
    stats = spec_stats(llm)
    assert stats["spec_decode_num_draft_tokens"] > stats["spec_decode_num_accepted_tokens"]
    if method == "ngram":
        assert stats["spec_decode_num_accepted_tokens"] > 0  # the repeating prompts


def test_rejected_drafts_are_rolled_back_every_step(target_dir, other_draft_dir):
    """After every step each running request has exactly its known tokens but the last in the
    cache: no rejected draft counts as computed, and no block outlives the run."""
    llm = engine(target_dir, {"method": "draft_model", "model": other_draft_dir,
                              "num_speculative_tokens": K})
    core = llm.llm_engine.core
    from llmserve.request import EngineCoreRequest

    for i, p in enumerate(PROMPTS):
        core.add_request(EngineCoreRequest(f"r{i}", p, greedy(30), frozenset()))
    steps = 0
    while core.has_unfinished_requests():
        core.step()
        steps += 1
        for request in core.scheduler.running:
            assert request.num_computed_tokens == request.num_tokens - 1
    assert spec_stats(llm)["spec_decode_num_drafts"] > 0
    assert core.kv_manager.usage == 0.0
    assert core.kv_manager.num_free_blocks == core.num_blocks
    assert steps < 40


SCHEDULING = pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])


@SCHEDULING
def test_chunked_prefill_prefix_caching_and_preemption(target_dir, reference, async_scheduling):
    spec = {"method": "draft_model", "model": target_dir, "num_speculative_tokens": K}
    llm = engine(target_dir, spec, max_num_batched_tokens=16, num_gpu_blocks_override=12,
                 max_num_seqs=4, async_scheduling=async_scheduling)
    assert run_greedy(llm) == reference
    assert run_greedy(llm) == reference  # again: prefix hits
    core = llm.llm_engine.core
    assert core.scheduler.num_preemptions > 0
    assert spec_stats(llm)["prefix_cache_hits"] > 0
    assert spec_stats(llm)["spec_decode_num_accepted_tokens"] > 0


@SCHEDULING
def test_logprobs_stop_ids_and_n(target_dir, async_scheduling):
    base, spec = engine(target_dir), engine(target_dir, {
        "method": "draft_model", "model": target_dir, "num_speculative_tokens": K},
        async_scheduling=async_scheduling)
    prompt = {"prompt_token_ids": PROMPTS[2]}
    want = base.generate(prompt, greedy(20, logprobs=3), use_tqdm=False)[0].outputs[0]
    got = spec.generate(prompt, greedy(20, logprobs=3), use_tqdm=False)[0].outputs[0]
    assert got.token_ids == want.token_ids
    for a, b in zip(got.logprobs, want.logprobs):
        assert list(a) == list(b)
        for tok in a:
            assert a[tok].logprob == pytest.approx(b[tok].logprob, abs=1e-4)
            assert a[tok].rank == b[tok].rank
    # A stop token in the middle of an accepted run of drafts ends the output there.
    stop = want.token_ids[9]
    cut = spec.generate(prompt, greedy(20, stop_token_ids=[stop]), use_tqdm=False)[0].outputs[0]
    first = want.token_ids.index(stop)
    assert cut.token_ids == want.token_ids[:first + 1] and cut.finish_reason == "stop"
    seeded = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=5, ignore_eos=True)
    a = [c.token_ids for c in spec.generate(prompt, seeded, use_tqdm=False)[0].outputs]
    b = [c.token_ids for c in spec.generate([prompt, {"prompt_token_ids": [9] * 5}],
                                            seeded, use_tqdm=False)[0].outputs]
    assert a == b and len({tuple(x) for x in a}) > 1


def test_disable_by_batch_size(target_dir, reference):
    llm = engine(target_dir, {"method": "draft_model", "model": target_dir,
                              "num_speculative_tokens": K, "disable_by_batch_size": 2})
    # One long request among short ones: it drafts only once it runs alone.
    params = [greedy(24)] + [greedy(6)] * (len(PROMPTS) - 1)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [reference[0]] + [r[:6] for r in
                                                                      reference[1:]]
    stats = spec_stats(llm)
    # 6 steps of five running without drafts, then the 18 left in steps of K + 1 (the target
    # drafts for itself, all accepted) after the first step alone.
    assert 3 <= stats["spec_decode_num_drafts"] <= 6
    assert stats["spec_decode_num_accepted_tokens"] == stats["spec_decode_num_draft_tokens"]


def _chi2_two_sample(a: Counter, b: Counter) -> tuple[float, int]:
    """Two-sample chi-square for equal sample sizes; cells under 10 draws pooled."""
    cells = set(a) | set(b)
    big = [c for c in cells if a[c] + b[c] >= 10]
    pooled = (sum(a[c] for c in cells if c not in big), sum(b[c] for c in cells if c not in big))
    pairs = [(a[c], b[c]) for c in big] + ([pooled] if sum(pooled) else [])
    stat = sum((x - y) ** 2 / (x + y) for x, y in pairs)
    return stat, len(pairs) - 1


def _critical(dof: int) -> float:
    return CHI2_999[min((d for d in CHI2_999 if d >= dof), default=max(CHI2_999))]


@SCHEDULING
def test_sampled_output_follows_the_target_distribution(target_dir, async_scheduling):
    """4,000 draws of three tokens (top-k 4, temperature 0.8) against 4,000 without
    speculation. The draft is the target's greedy choice, which a sampled target takes only
    part of the time: both acceptance and the residual distribution are exercised."""
    n = 4000
    params = SamplingParams(temperature=0.8, top_k=4, max_tokens=3, ignore_eos=True)
    prompt = {"prompt_token_ids": [5, 9, 11, 300]}
    runs = []
    for spec in (None, {"method": "draft_model", "model": target_dir,
                        "num_speculative_tokens": 2}):
        llm = engine(target_dir, spec, max_model_len=64, seed=len(runs),
                     async_scheduling=async_scheduling)
        outs = llm.generate([prompt] * n, params, use_tqdm=False)
        runs.append([tuple(o.outputs[0].token_ids) for o in outs])
        if spec:
            stats = spec_stats(llm)
    assert 0 < stats["spec_decode_num_accepted_tokens"] < stats["spec_decode_num_draft_tokens"]
    plain, spec = runs
    for name, key in [("first two tokens", lambda t: t[:2]), ("third token", lambda t: t[2]),
                      ("second and third", lambda t: t[1:])]:
        stat, dof = _chi2_two_sample(Counter(map(key, plain)), Counter(map(key, spec)))
        assert dof >= 3, name
        assert stat < _critical(dof), f"{name}: chi2 {stat:.1f} on {dof} dof"


def test_bad_speculative_configs(target_dir):
    with pytest.raises(ValueError, match=r"method must be one of the installed methods "
                                         r"\['draft_model', 'eagle', 'eagle3', 'ngram'\], "
                                         r"got 'medusa'"):
        engine(target_dir, {"method": "medusa", "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        engine(target_dir, {"method": "ngram", "num_speculative_tokens": 0})
    with pytest.raises(ValueError, match=r"prompt_lookup_min \(4\) must be <= "
                                         r"prompt_lookup_max \(2\)"):
        engine(target_dir, {"method": "ngram", "num_speculative_tokens": 2,
                            "prompt_lookup_min": 4, "prompt_lookup_max": 2})
    with pytest.raises(ValueError, match="speculative_config.model is required"):
        engine(target_dir, {"method": "draft_model", "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="not valid JSON"):
        engine(target_dir, "{method: ngram}")


def test_speculative_config_from_json_text(target_dir, reference):
    llm = engine(target_dir, '{"method": "ngram", "num_speculative_tokens": 2}')
    assert llm.llm_engine.core.resolved.config.speculative.num_speculative_tokens == 2
    assert run_greedy(llm) == reference


class RepeatProposer(Proposer):
    """The example of docs/plugins/hooks/llmserve_speculative_proposers.md."""

    def propose(self, batch: ProposalBatch):
        drafts = []
        for row, n, d in zip(batch.rows, batch.num_tokens, batch.max_drafts):
            period = batch.token_ids[row, max(0, n - self.k):n]
            drafts.append(period[:d].copy())
        return drafts


class RepeatPlugin:
    LLMSERVE_PLUGIN_API = ">=1.4,<2"

    @hookimpl
    def llmserve_speculative_proposers(self):
        return {"repeat": RepeatProposer}


def test_a_third_party_proposer_plugs_in(target_dir, reference):
    pm = fresh_plugin_manager()
    with registered_plugin(pm, RepeatPlugin(), "repeat"):
        engine_ = LLMEngine(EngineArgs(model=target_dir, dtype="float32", max_model_len=256,
                                       speculative_config={"method": "repeat",
                                                           "num_speculative_tokens": K}), pm)
        for i, p in enumerate(PROMPTS):
            engine_.add_request(f"r{i}", p, greedy())
        tokens: dict[str, list[int]] = {}
        while engine_.has_unfinished_requests():
            for out in engine_.step():
                tokens[out.request_id] = out.outputs[0].token_ids
    assert [tokens[f"r{i}"] for i in range(len(PROMPTS))] == reference
    assert engine_.core.stats()["spec_decode_num_draft_tokens"] > 0


def test_constrained_and_penalised_requests_beside_drafting_ones(target_dir, reference):
    """A grammar or a penalty reads the output on the host, so such requests take no drafts;
    they still decode as without speculation while the others draft in the same steps."""
    from llmserve.structured_output import StructuredOutputsParams

    choice = SamplingParams(temperature=0, max_tokens=12,
                            structured_outputs=StructuredOutputsParams(choice=["red", "blue"]))
    penalised = greedy(repetition_penalty=1.3, frequency_penalty=0.5)
    items = [{"prompt_token_ids": p} for p in PROMPTS[:3]]
    params = [choice, penalised, greedy()]
    want = [o.outputs[0] for o in engine(target_dir).generate(items, params, use_tqdm=False)]
    llm = engine(target_dir, {"method": "draft_model", "model": target_dir,
                              "num_speculative_tokens": K})
    got = [o.outputs[0] for o in llm.generate(items, params, use_tqdm=False)]
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert got[0].text in ("red", "blue") and got[2].token_ids == reference[2]
    assert spec_stats(llm)["spec_decode_num_accepted_tokens"] > 0


def test_proposer_conformance_kit(target_dir):
    from llmserve.plugin_testing.spec_decode import check_proposer
    from llmserve.spec_decode.ngram import NgramProposer

    stats = check_proposer(NgramProposer, target_dir, prompt_lookup_max=3)
    assert stats["spec_decode_num_accepted_tokens"] > 0  # the repeating prompt
    assert check_proposer(RepeatProposer, target_dir)["spec_decode_num_drafts"] > 0

    class Greedy(RepeatProposer):
        def propose(self, batch):
            return [np.concatenate([d, d[:1], [1]]) for d in super().propose(batch)]

    with pytest.raises(AssertionError, match="more than max_drafts"):
        check_proposer(Greedy, target_dir)


def test_conformance_kit_checks_drafts_made_on_the_device(target_dir):
    """The kit runs ``propose_pending`` through the replay paths: the draft model passes, and
    a proposer whose device drafts are one column short is caught."""
    from llmserve.plugin_testing.spec_decode import check_proposer
    from llmserve.spec_decode.draft_model import DraftModelProposer

    stats = check_proposer(DraftModelProposer, target_dir, model=target_dir)
    assert stats["spec_decode_num_accepted_tokens"] == stats["spec_decode_num_draft_tokens"] > 0

    class Short(DraftModelProposer):
        def propose_pending(self, batch):
            drafts = super().propose_pending(batch)
            return None if drafts is None else drafts[:, :-1]

    with pytest.raises(AssertionError, match="propose_pending returned"):
        check_proposer(Short, target_dir, model=target_dir)


def test_the_default_model_drafts_with_its_shipped_draft():
    """``{"method": "draft_model"}`` without a model: the draft next to the default model,
    trained on the same text. These prompts are passage openings (9 to 11 tokens of
    context), where the draft is at its weakest: measured acceptance 0.418, mean accepted
    length 2.58 with k=4 (fp32, CPU); deeper into a passage it accepts nearly everything."""
    from llmserve.default_model import DRAFT_MODEL_PATH, GREEDY_SAMPLES

    llm = LLM(speculative_config={"method": "draft_model", "num_speculative_tokens": 4})
    runner = llm.llm_engine.core.runner
    assert runner.proposer.path == str(DRAFT_MODEL_PATH)
    outs = llm.generate([{"prompt_token_ids": s["prompt_token_ids"]} for s in GREEDY_SAMPLES],
                        SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [s["token_ids"] for s in GREEDY_SAMPLES]
    stats = llm.llm_engine.core.scheduler.spec_stats
    assert stats.acceptance_rate > 0.35 and stats.mean_accepted_length > 2.3


class ObservingProposer(RepeatProposer):
    """Records every target forward it is shown, with the inputs of layers 0 and 1."""

    observes_target = True
    seen: list = []

    def target_layers(self):
        return (0, 1)

    def observe(self, step):
        ObservingProposer.seen.append(
            (step.rows.copy(), step.computed.copy(), step.num_scheduled.copy(),
             step.query_start.copy(), step.hidden_states.clone(),
             step.aux_hidden_states.clone()))


def test_an_observing_proposer_sees_every_computed_token(target_dir, reference):
    """``observe`` covers each position once per computation (drafts included), with the
    final hidden states and the requested layers' inputs (layer 0's is the embedding)."""
    ObservingProposer.seen = []

    class Plugin:
        LLMSERVE_PLUGIN_API = ">=1.5,<2"

        @hookimpl
        def llmserve_speculative_proposers(self):
            return {"observing": ObservingProposer}

    pm = fresh_plugin_manager()
    with registered_plugin(pm, Plugin(), "observing"):
        engine_ = LLMEngine(EngineArgs(model=target_dir, dtype="float32", max_model_len=256,
                                       speculative_config={"method": "observing",
                                                           "num_speculative_tokens": K}), pm)
        prompt = PROMPTS[3]
        engine_.add_request("r", prompt, greedy())
        while engine_.has_unfinished_requests():
            for out in engine_.step():
                output = list(out.outputs[0].token_ids)
    assert output == reference[3]
    model = engine_.core.runner.model
    tokens = prompt + output
    # Positions computed, in order, with restarts at the rollback points.
    next_position = 0
    for rows, computed, num_sched, start, hidden, aux in ObservingProposer.seen:
        assert len(rows) == 1 and start[0] == 0 and hidden.shape[0] == num_sched[0]
        assert computed[0] <= next_position
        next_position = computed[0] + num_sched[0]
        assert aux.shape == (hidden.shape[0], 2 * hidden.shape[1])
        ids = torch.tensor(tokens[computed[0]:computed[0] + num_sched[0]])
        if computed[0] + num_sched[0] <= len(prompt):
            embeds = model.embed_input_ids(ids)
            torch.testing.assert_close(aux[:, :hidden.shape[1]], embeds)
    assert next_position >= len(tokens) - 1
    assert engine_.core.stats()["spec_decode_num_draft_tokens"] > 0


ASYNC_SPECS = {
    "self-draft": lambda target, other: {"method": "draft_model", "model": target,
                                         "num_speculative_tokens": K},
    "unrelated draft": lambda target, other: {"method": "draft_model", "model": other,
                                              "num_speculative_tokens": K},
    "ngram": lambda target, other: {"method": "ngram", "num_speculative_tokens": K},
}


@pytest.mark.parametrize("name", list(ASYNC_SPECS))
def test_asynchronous_scheduling_keeps_the_greedy_output(target_dir, other_draft_dir,
                                                         reference, name):
    """With asynchronous scheduling the scheduler places the drafts before the tokens they
    follow are known; its counts are optimistic until each step's outputs roll back the
    rejected drafts. After every step each running request has all its tokens, counting
    those in flight, but the last in the cache, and no block outlives the run."""
    llm = engine(target_dir, ASYNC_SPECS[name](target_dir, other_draft_dir),
                 async_scheduling=True)
    core = llm.llm_engine.core
    assert core.async_scheduling and core.scheduler.drafts_ahead
    from llmserve.request import EngineCoreRequest

    for i, p in enumerate(PROMPTS):
        core.add_request(EngineCoreRequest(f"r{i}", p, greedy(), frozenset()))
    got: dict[str, list[int]] = {f"r{i}": [] for i in range(len(PROMPTS))}
    while core.has_unfinished_requests():
        for out in core.step():
            got[out.request_id] += out.new_token_ids
        for request in core.scheduler.running:
            assert request.num_computed_tokens == (request.num_tokens - 1
                                                   + request.num_output_placeholders)
    assert list(got.values()) == reference
    stats = spec_stats(llm)
    assert stats["spec_decode_num_drafts"] > 0
    if name == "self-draft":
        assert stats["spec_decode_num_accepted_tokens"] == stats["spec_decode_num_draft_tokens"]
    assert core.kv_manager.num_free_blocks == core.num_blocks


@SCHEDULING
def test_stop_strings_inside_a_run_of_accepted_drafts(target_dir, async_scheduling):
    """A stop string that ends inside a step's accepted drafts cuts the text there, as
    without speculation (the target drafts for itself: every step accepts k drafts)."""
    plain = engine(target_dir)
    spec = engine(target_dir, {"method": "draft_model", "model": target_dir,
                               "num_speculative_tokens": K}, async_scheduling=async_scheduling)
    prompt = {"prompt_token_ids": PROMPTS[2]}
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    text = plain.generate(prompt, params, use_tqdm=False)[0].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert len(stop) == 3 and text.index(stop) > 0
    stopped = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop])
    want = plain.generate(prompt, stopped, use_tqdm=False)[0].outputs[0]
    got = spec.generate(prompt, stopped, use_tqdm=False)[0].outputs[0]
    assert want.text == text[:text.index(stop)] and want.finish_reason == "stop"
    assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, "stop")
