"""Structured outputs through the offline engine (``LLM.generate``) on the CPU, for each
backend and each vocabulary: completions that finish with ``stop`` are what the constraint
describes, ``length`` cuts them, and the engine's machinery (n > 1, seeds, preemption,
chunked prefill, prefix caching, asynchronous scheduling, stop strings, mixed batches,
refused constraints) keeps every grammar's state right.

The models are random, so a completion is a random walk weighted by the model's logits;
seeded sampling makes every run reproduce.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from llmserve import LLM, SamplingParams
from llmserve.structured_output import StructuredOutputsParams
from random_schemas import SchemaGenerator
from recognisers import ARITHMETIC_EBNF, PAIRS_LARK, is_arithmetic, is_pairs
from vocab_models import BACKEND_NAMES, MODEL_NAMES

MAX_TOKENS = 48
NUM_SCHEMAS = 8
SEEDS = (0, 1)

#: Engine arguments of each scenario; "plain" is the reference the others must reproduce.
SCENARIOS = {
    "plain": dict(num_gpu_blocks_override=160),
    # 10 blocks of 16 tokens cannot hold the batch: requests are preempted and resumed.
    # A 24-token budget splits the long prompts' prefill over several steps.
    "preempt_chunked": dict(num_gpu_blocks_override=10, max_num_batched_tokens=24),
    "async": dict(num_gpu_blocks_override=160, async_scheduling=True),
}

PROMPT = "Reply with the record as JSON: "
LONG_PROMPT = ("The following text describes an object, and after it comes the object itself "
               "written out as JSON without comments or explanations. ") * 2

models = pytest.mark.parametrize("model_name", MODEL_NAMES)
backends = pytest.mark.parametrize("backend_name", BACKEND_NAMES)


@pytest.fixture(scope="module")
def engine(vocab_models):
    """``engine(model_name, backend, scenario)``: an ``LLM``, built once per module."""
    built: dict[tuple, LLM] = {}

    def make(model_name: str, backend: str, scenario: str = "plain") -> LLM:
        key = (model_name, backend, scenario)
        if key not in built:
            built[key] = LLM(str(vocab_models[model_name].path), dtype="float32",
                             max_model_len=512, structured_outputs_backend=backend,
                             **SCENARIOS[scenario])
        return built[key]

    return make


def json_params(schema, seed: int, max_tokens: int = MAX_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(structured_outputs=StructuredOutputsParams(json=schema, **kw),
                          temperature=1.0, seed=seed, max_tokens=max_tokens)


def random_schema_batch(model_name: str) -> tuple[list[dict], list[SamplingParams]]:
    """``NUM_SCHEMAS`` random schemas x ``SEEDS``; every other schema in compact JSON (no
    free whitespace, which a random model would otherwise spend its tokens on)."""
    generator = SchemaGenerator(seed=50 + MODEL_NAMES.index(model_name))
    schemas = [generator.schema() for _ in range(NUM_SCHEMAS)]
    params = [json_params(s, seed, disable_any_whitespace=i % 2 == 0)
              for i, s in enumerate(schemas) for seed in SEEDS]
    return [s for s in schemas for _ in SEEDS], params


def check_json_completions(outputs, schemas, eos_ids, max_tokens: int = MAX_TOKENS) -> int:
    """Every ``stop`` completion ends with an end token and validates; every ``length`` one
    has ``max_tokens`` tokens. Returns how many stopped."""
    num_stopped = 0
    for out, schema in zip(outputs, schemas):
        for c in out.outputs:
            assert c.finish_reason in ("stop", "length"), c
            if c.finish_reason == "length":
                assert len(c.token_ids) == max_tokens
                continue
            num_stopped += 1
            assert c.token_ids[-1] in eos_ids and c.stop_reason is None, c
            try:
                jsonschema.validate(json.loads(c.text), schema)
            except (ValueError, jsonschema.ValidationError) as exc:
                raise AssertionError(f"{c.text!r} for {json.dumps(schema)}: {exc}") from None
    return num_stopped


def texts(outputs) -> list[list[str]]:
    return [[c.text for c in out.outputs] for out in outputs]


@models
@backends
def test_random_schemas(engine, vocab_models, model_name, backend_name):
    llm = engine(model_name, backend_name)
    schemas, params = random_schema_batch(model_name)
    outputs = llm.generate([PROMPT] * len(params), params, use_tqdm=False)
    num_stopped = check_json_completions(outputs, schemas,
                                         vocab_models[model_name].eos_token_ids)
    assert num_stopped >= len(params) // 4, f"only {num_stopped} of {len(params)} completed"
    # The same seeds give the same texts in another batch, in another order.
    again = llm.generate([PROMPT] * 4, params[3::-1], use_tqdm=False)
    assert texts(again) == texts(outputs[3::-1])


@models
@backends
def test_regex_choice_and_grammars(engine, model_name, backend_name):
    llm = engine(model_name, backend_name)
    constrained = [
        (StructuredOutputsParams(choice=["red", "green", "dark red", "日本"]),
         lambda t: t in ("red", "green", "dark red", "日本")),
        (StructuredOutputsParams(regex=r"[a-z]{1,6}@[a-z]{1,6}\.(com|org)"),
         lambda t: re.fullmatch(r"[a-z]{1,6}@[a-z]{1,6}\.(com|org)", t)),
        (StructuredOutputsParams(grammar=ARITHMETIC_EBNF), is_arithmetic),
        (StructuredOutputsParams(grammar=PAIRS_LARK), is_pairs),
        (StructuredOutputsParams(json_object=True, disable_any_whitespace=True),
         lambda t: isinstance(json.loads(t), dict)),
    ]
    params = [SamplingParams(structured_outputs=c, temperature=1.0, seed=seed, n=2,
                             max_tokens=MAX_TOKENS)
              for c, _ in constrained for seed in SEEDS]
    outputs = llm.generate([PROMPT] * len(params), params, use_tqdm=False)
    for i, out in enumerate(outputs):
        check = constrained[i // len(SEEDS)][1]
        assert len(out.outputs) == 2
        for c in out.outputs:
            if c.finish_reason == "stop":
                assert check(c.text), (constrained[i // len(SEEDS)][0], c.text)
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == MAX_TOKENS
    choices = [c for out in outputs[:len(SEEDS)] for c in out.outputs]
    assert all(c.finish_reason == "stop" for c in choices)  # every choice fits the budget


@models
@backends
def test_max_tokens_cuts_the_structure(engine, model_name, backend_name):
    llm = engine(model_name, backend_name)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "tags": {"type": "array", "minItems": 2,
                                                        "items": {"type": "integer"}}},
              "required": ["name", "tags"], "additionalProperties": False}
    outputs = llm.generate([PROMPT] * 2, [json_params(schema, s, max_tokens=3) for s in SEEDS],
                           use_tqdm=False)
    for out in outputs:
        c = out.outputs[0]
        assert c.finish_reason == "length" and len(c.token_ids) == 3
        assert c.text.lstrip().startswith("{")
        with pytest.raises(ValueError):
            json.loads(c.text)


@models
@backends
def test_n_completions_are_each_valid_and_seeded(engine, vocab_models, model_name,
                                                 backend_name):
    llm = engine(model_name, backend_name)
    schema = {"type": "array", "items": {"enum": ["a", "b", 1, None]}, "minItems": 1,
              "maxItems": 4}
    params = SamplingParams(structured_outputs=StructuredOutputsParams(
        json=schema, disable_any_whitespace=True), n=4, temperature=1.0, seed=5, max_tokens=24)
    (first,) = llm.generate(PROMPT, params, use_tqdm=False)
    assert [c.index for c in first.outputs] == [0, 1, 2, 3]
    stopped = check_json_completions([first], [schema], vocab_models[model_name].eos_token_ids,
                                     max_tokens=24)
    assert stopped == 4  # at most 4 items of one token each, and the brackets and commas
    assert len(set(texts([first])[0])) > 1
    (again,) = llm.generate(PROMPT, params, use_tqdm=False)
    assert texts([again]) == texts([first])


SCENARIO_TOKENS = 32


def scenario_batch(model_name: str):
    """Six constrained requests on long and short prompts, and an unconstrained one."""
    schemas, params = random_schema_batch(model_name)
    params = [p.model_copy(update={"max_tokens": SCENARIO_TOKENS}) for p in params[:6]]
    prompts = [LONG_PROMPT if i % 3 == 0 else PROMPT for i in range(len(params))]
    free = SamplingParams(temperature=1.0, seed=9, max_tokens=SCENARIO_TOKENS, ignore_eos=True)
    return schemas[:6], prompts + [LONG_PROMPT], params + [free]


@pytest.fixture(scope="module")
def plain_outputs(engine):
    """The plain engine's outputs of ``scenario_batch``, per (model, backend)."""
    done: dict[tuple, list] = {}

    def get(model_name: str, backend: str):
        if (model_name, backend) not in done:
            _, prompts, params = scenario_batch(model_name)
            done[model_name, backend] = engine(model_name, backend).generate(
                prompts, params, use_tqdm=False)
        return done[model_name, backend]

    return get


@models
@backends
@pytest.mark.parametrize("scenario", ["preempt_chunked", "async"])
def test_engine_scenarios_reproduce_the_plain_engine(engine, plain_outputs, vocab_models,
                                                     model_name, backend_name, scenario):
    schemas, prompts, params = scenario_batch(model_name)
    expected = plain_outputs(model_name, backend_name)
    llm = engine(model_name, backend_name, scenario)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    check_json_completions(outputs[:-1], schemas, vocab_models[model_name].eos_token_ids,
                           max_tokens=SCENARIO_TOKENS)
    assert texts(outputs) == texts(expected)
    assert [o.outputs[0].finish_reason for o in outputs] == \
        [o.outputs[0].finish_reason for o in expected]
    core = llm.llm_engine.core
    if scenario == "preempt_chunked":
        assert core.scheduler.num_preemptions > 0
    assert not llm.llm_engine.has_unfinished_requests()
    core.kv_manager.reset_prefix_cache()
    assert core.kv_manager.num_free_blocks == core.num_blocks


@models
@backends
def test_prefix_cache_hits_keep_the_outputs(engine, vocab_models, model_name, backend_name):
    llm = engine(model_name, backend_name)
    schemas, params = random_schema_batch(model_name)
    prompt = LONG_PROMPT + model_name  # a prefix no other test has cached
    first = llm.generate([prompt] * 2, params[:2], use_tqdm=False)
    second = llm.generate([prompt] * 2, params[:2], use_tqdm=False)
    assert all(o.num_cached_tokens >= 16 for o in second)
    assert texts(second) == texts(first)
    check_json_completions(second, schemas[:2], vocab_models[model_name].eos_token_ids)


@models
@backends
def test_stop_strings_end_a_constrained_completion(engine, model_name, backend_name):
    llm = engine(model_name, backend_name)
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
              "minItems": 3, "maxItems": 3}
    params = [SamplingParams(structured_outputs=StructuredOutputsParams(
        json=schema, disable_any_whitespace=True), temperature=1.0, seed=s, stop=[","],
        max_tokens=MAX_TOKENS) for s in SEEDS]
    for out in llm.generate([PROMPT] * len(params), params, use_tqdm=False):
        c = out.outputs[0]
        assert c.finish_reason == "stop" and c.stop_reason == ",", c
        assert len(c.text) == 2 and c.text[0] == "[" and c.text[1].isdigit(), c.text


@models
@backends
def test_the_grammar_end_overrides_min_tokens(engine, model_name, backend_name):
    """A grammar that can only end before ``min_tokens`` finishes with ``stop`` (with
    every token masked, sampling would otherwise pick a token the grammar refuses)."""
    llm = engine(model_name, backend_name)
    choice = StructuredOutputsParams(choice=["yes", "no"])
    params = [SamplingParams(structured_outputs=choice, min_tokens=8, max_tokens=20,
                             temperature=t, seed=3) for t in (0.0, 1.0)]
    for out in llm.generate([PROMPT] * len(params), params, use_tqdm=False):
        c = out.outputs[0]
        assert c.finish_reason == "stop" and c.text in ("yes", "no"), c
        assert c.token_ids[-1] in llm.llm_engine.frontend.eos_token_ids, c.token_ids


@models
@backends
def test_unconstrained_requests_are_unaffected(engine, model_name, backend_name):
    llm = engine(model_name, backend_name)
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    prompts = ["The quick brown fox", "Numbers: 1, 2, 3", LONG_PROMPT]
    alone = llm.generate(prompts, greedy, use_tqdm=False)
    _, params = random_schema_batch(model_name)
    mixed = llm.generate(prompts + [PROMPT] * 4, [greedy] * 3 + params[:4], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == [o.outputs[0].token_ids
                                                           for o in alone]


INVALID = [
    pytest.param(StructuredOutputsParams(regex="(abc"), id="regex"),
    pytest.param(StructuredOutputsParams(json={"type": "object", "properties": {
        "a": {"type": "strin"}}}), id="json"),
    pytest.param(StructuredOutputsParams(grammar='root ::= "a" foo'), id="ebnf"),
    pytest.param(StructuredOutputsParams(grammar='start: "a" foo'), id="lark"),
]


@models
@backends
@pytest.mark.parametrize("constraint", INVALID)
def test_an_invalid_constraint_is_a_value_error(engine, model_name, backend_name,
                                                constraint):
    llm = engine(model_name, backend_name)
    core = llm.llm_engine.core
    free = core.kv_manager.num_free_blocks
    library = "xgrammar" if backend_name == "xgrammar" else "llguidance"
    bad = SamplingParams(structured_outputs=constraint, max_tokens=8)
    good = json_params({"type": "integer"}, 0, max_tokens=8)
    with pytest.raises(ValueError, match=f"{library} cannot compile the "
                                         f"{constraint.spec.kind} constraint"):
        llm.generate(PROMPT, bad, use_tqdm=False)
    with pytest.raises(ValueError, match=library):
        llm.generate([PROMPT, PROMPT], [good, bad], use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    assert core.kv_manager.num_free_blocks == free
    (out,) = llm.generate(PROMPT, good, use_tqdm=False)
    assert out.outputs[0].finish_reason in ("stop", "length")
    if out.outputs[0].finish_reason == "stop":
        assert isinstance(json.loads(out.outputs[0].text), int)


@models
def test_auto_falls_back_per_request(engine, model_name):
    """A constraint xgrammar refuses is served by guidance under ``auto``, and refused when
    only xgrammar may serve it."""
    unicode_words = StructuredOutputsParams(regex=r"\p{Lu}\p{Ll}{1,3}")
    # Four letters of at most four bytes each: always complete within 20 tokens.
    params = [SamplingParams(structured_outputs=unicode_words, temperature=1.0, seed=s,
                             max_tokens=20) for s in SEEDS]
    outputs = engine(model_name, "auto").generate([PROMPT] * 2, params, use_tqdm=False)
    for out in outputs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", c
        assert 2 <= len(c.text) <= 4 and c.text[0].isupper() and c.text[1:].islower(), c.text
    with pytest.raises(ValueError, match="Unicode character class"):
        engine(model_name, "xgrammar").generate(PROMPT, params[0], use_tqdm=False)
