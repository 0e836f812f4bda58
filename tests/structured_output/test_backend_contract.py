"""What ``GrammarMatcher`` and ``StructuredOutputBackend`` promise the core, checked on both
shipped backends and all three vocabularies: termination only on the end token, exact
rollback, refused tokens change nothing, batch masks equal single masks, errors that name
the problem, and JSON-schema keywords that are either honoured or refused, never ignored."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from grammar_walk import mask_of, random_walk, walk_text
from llmserve.plugin_testing.structured_output import check_structured_output_backend
from llmserve.structured_output import GrammarError, StructuredOutputsParams, bitmask_width
from recognisers import ARITHMETIC_EBNF, PAIRS_LARK
from vocab_models import BACKEND_NAMES, MODEL_NAMES, spell

pytestmark = [pytest.mark.parametrize("model_name", MODEL_NAMES),
              pytest.mark.parametrize("backend_name", BACKEND_NAMES)]

#: One constraint of each kind, each with a text that is a complete sentence of it.
SENTENCES = [
    (StructuredOutputsParams(json={"type": "object", "properties": {
        "id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["id"]}), '{"id": 12, "tags": ["a", "b c"]}'),
    (StructuredOutputsParams(regex=r"[a-z]+@[a-z]+\.com"), "abc@example.com"),
    (StructuredOutputsParams(choice=["yes", "no", "yesterday"]), "yesterday"),
    (StructuredOutputsParams(grammar=ARITHMETIC_EBNF), "(12+3)*45"),
    (StructuredOutputsParams(grammar=PAIRS_LARK), 'ab=[1;"x"],c=-7'),
]

#: Constraints with exactly one sentence: after it, only an end token may follow.
FORCED_ENDS = [
    (StructuredOutputsParams(choice=["yes"]), "yes"),
    (StructuredOutputsParams(regex=r"[0-9]{3}"), "123"),
    (StructuredOutputsParams(grammar='root ::= "ab" "c"'), "abc"),
    (StructuredOutputsParams(json={"const": "ok"}, disable_any_whitespace=True), '"ok"'),
]


def kind_id(value) -> str:
    return value.spec.kind if isinstance(value, StructuredOutputsParams) else "text"


@pytest.mark.parametrize("params, text", FORCED_ENDS, ids=kind_id)
def test_terminates_only_on_the_end_token(make_backend, vocab_models, backend_name,
                                          model_name, params, text):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    matcher = backend.matcher(backend.compile(params.spec))
    for token in spell(model, text):
        assert not matcher.is_terminated()
        assert matcher.accept_token(token)
    assert not matcher.is_terminated(), "terminated before its end token was accepted"
    assert mask_of(matcher, model.vocab_size).tolist() == list(model.eos_token_ids)
    assert matcher.accept_token(model.eos_token_ids[0])
    assert matcher.is_terminated()


@pytest.mark.parametrize("params, text", SENTENCES, ids=kind_id)
def test_sentences_are_accepted_in_any_tokenization(make_backend, vocab_models, backend_name,
                                                    model_name, params, text):
    """A byte-by-byte spelling is accepted; the tokenizer's own tokens are also allowed by
    the mask at every step. (A mask may leave out other spellings of bytes the grammar
    forces: llguidance offers only the canonical token there.)"""
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    compiled = backend.compile(params.spec)
    matcher = backend.matcher(compiled)
    assert all(matcher.accept_token(t) for t in spell(model, text))
    assert matcher.accept_token(model.eos_token_ids[0]) and matcher.is_terminated()
    if model.name == "byte_fallback":  # SentencePiece would encode a leading "▁" as well
        return
    matcher = backend.matcher(compiled)
    for token in model.tokenizer.encode(text, add_special_tokens=False):
        assert token in set(mask_of(matcher, model.vocab_size).tolist())
        assert matcher.accept_token(token)
    assert matcher.accept_token(model.eos_token_ids[0]) and matcher.is_terminated()


@pytest.mark.parametrize("params, text", SENTENCES, ids=kind_id)
def test_rollback_restores_every_earlier_mask(make_backend, vocab_models, backend_name,
                                              model_name, params, text):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    compiled = backend.compile(params.spec)
    max_steps = 2 if params.spec.kind == "choice" else 10  # a walk must not reach the end
    for seed in range(3):
        matcher = backend.matcher(compiled)
        walk = random_walk(matcher, model, seed=seed, max_steps=max_steps, p_eos=0.0,
                           keep_masks=True)
        assert not walk.terminated
        steps = len(walk.token_ids)
        for undone in range(1, steps + 1):
            matcher.rollback(1)
            assert np.array_equal(mask_of(matcher, model.vocab_size), walk.masks[-undone])
        assert np.array_equal(mask_of(matcher, model.vocab_size), walk.masks[0])
        for token in walk.token_ids:  # the same path is open again
            assert matcher.accept_token(token)
        matcher.rollback(steps)
        assert np.array_equal(mask_of(matcher, model.vocab_size), walk.masks[0])


@pytest.mark.parametrize("params, text", SENTENCES + FORCED_ENDS, ids=kind_id)
def test_rollback_of_the_end_token(make_backend, vocab_models, backend_name, model_name,
                                   params, text):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    matcher = backend.matcher(backend.compile(params.spec))
    for token in spell(model, text):
        assert matcher.accept_token(token)
    before_end = mask_of(matcher, model.vocab_size)
    assert matcher.accept_token(model.eos_token_ids[0]) and matcher.is_terminated()
    matcher.rollback(1)
    assert not matcher.is_terminated()
    assert np.array_equal(mask_of(matcher, model.vocab_size), before_end)
    assert matcher.accept_token(model.eos_token_ids[0]) and matcher.is_terminated()


@pytest.mark.parametrize("params, text", SENTENCES, ids=kind_id)
def test_a_refused_token_changes_nothing(make_backend, vocab_models, backend_name,
                                         model_name, params, text):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    matcher = backend.matcher(backend.compile(params.spec))
    tokens = spell(model, text)
    half = len(tokens) // 2
    for token in tokens[:half]:
        assert matcher.accept_token(token)
    mask = mask_of(matcher, model.vocab_size)
    special = set(model.tokenizer.all_special_ids)
    refused = next(t for t in range(len(model.tokenizer))
                   if t not in special and t not in set(mask.tolist()))
    assert not matcher.accept_token(refused)
    assert np.array_equal(mask_of(matcher, model.vocab_size), mask)
    for token in tokens[half:]:
        assert matcher.accept_token(token)
    assert matcher.accept_token(model.eos_token_ids[0]) and matcher.is_terminated()


def test_batch_fill_equals_single_fills(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    matchers = []
    for params, text in SENTENCES:
        matcher = backend.matcher(backend.compile(params.spec))
        tokens = spell(model, text)
        for token in tokens[:len(tokens) // 2]:
            assert matcher.accept_token(token)
        matchers.append(matcher)
    rows = [5, 0, 3, 6, 2]
    width = bitmask_width(model.vocab_size)
    sentinel = np.int32(0x5A5A5A5A)
    batch = np.full((8, width), sentinel, dtype=np.int32)
    backend.fill_bitmasks(matchers, batch, rows)
    for matcher, row in zip(matchers, rows):
        single = np.zeros((1, width), dtype=np.int32)
        matcher.fill_bitmask(single, 0)
        assert np.array_equal(batch[row], single[0]), row
    untouched = sorted(set(range(8)) - set(rows))
    assert (batch[untouched] == sentinel).all()
    one = np.full((2, width), sentinel, dtype=np.int32)
    backend.fill_bitmasks(matchers[:1], one, [1])
    assert np.array_equal(one[1], batch[5]) and (one[0] == sentinel).all()


def test_padding_ids_are_never_allowed(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    for params, _ in SENTENCES:
        bitmask = np.full((1, bitmask_width(model.vocab_size)), -1, dtype=np.int32)
        backend.matcher(backend.compile(params.spec)).fill_bitmask(bitmask, 0)
        bits = np.unpackbits(bitmask[0].view(np.uint8), bitorder="little")
        assert not bits[len(model.tokenizer):].any()


#: Invalid constraints, and what each backend's message must say about the problem.
INVALID = [
    pytest.param(dict(json={"type": "object", "properties": {"a": {"type": "strin"}}}),
                 {"xgrammar": "strin", "guidance": "strin"}, id="json-type"),
    pytest.param(dict(json={"type": "string", "minLength": 5, "maxLength": 2}),
                 {"xgrammar": "minLength 5 is greater than maxLength 2",
                  "guidance": r"minLength \(5\) is greater than maxLength \(2\)"},
                 id="json-length"),
    pytest.param(dict(json={"type": "array", "minItems": 3, "maxItems": 1}),
                 {"xgrammar": "minItems", "guidance": "minItems"}, id="json-items"),
    pytest.param(dict(json={"$ref": "#/$defs/missing"}),
                 {"xgrammar": r"\$defs/missing", "guidance": r"\$defs/missing"}, id="json-ref"),
    pytest.param(dict(regex="(abc"), {"xgrammar": "parenthesis is not closed",
                                      "guidance": "unclosed group"}, id="regex-group"),
    pytest.param(dict(regex="a{2,1}"), {"xgrammar": "Lower bound is larger than upper bound",
                                        "guidance": "invalid repetition count range"},
                 id="regex-repeat"),
    pytest.param(dict(grammar='root ::= "a" foo'), {"xgrammar": 'Rule "foo" is not defined',
                                                    "guidance": "Rule 'foo' not found"},
                 id="ebnf-rule"),
    pytest.param(dict(grammar='start: "a" foo'), {"xgrammar": "unknown name 'foo'",
                                                  "guidance": 'unknown name: "foo"'},
                 id="lark-name"),
    pytest.param(dict(grammar='root ::= "unterminated'),
                 {"xgrammar": "string literal", "guidance": "Unexpected end of input"},
                 id="ebnf-string"),
]


@pytest.mark.parametrize("constraint, expected", INVALID)
def test_invalid_constraints_raise_grammar_error(make_backend, backend_name, model_name,
                                                 constraint, expected):
    backend = make_backend(backend_name, model_name)
    params = StructuredOutputsParams(**constraint)
    with pytest.raises(GrammarError) as info:
        backend.compile(params.spec)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    library = "xgrammar" if backend_name == "xgrammar" else "llguidance"
    assert message.startswith(f"{library} cannot compile the {params.spec.kind} constraint: ")
    assert re.search(expected[backend_name], message), message
    assert not re.search(r"\[\d\d:\d\d:\d\d\]|\.cc:\d+", message)  # no native log prefix


def test_length_bounded_strings_are_json_strings(make_backend, vocab_models, backend_name,
                                                 model_name):
    """Inside a string, raw control characters are refused (RFC 8259 wants them escaped),
    with or without ``maxLength``. Escapes are allowed in every string but xgrammar's
    length-bounded ones, which keep to characters that need none (a documented sound subset:
    an escape there costs 16x the mask time, see the xgrammar backend)."""
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    for schema in ({"type": "string"}, {"type": "string", "maxLength": 6},
                   {"type": "string", "minLength": 2}):
        matcher = backend.matcher(backend.compile(StructuredOutputsParams(json=schema).spec))
        assert all(matcher.accept_token(t) for t in spell(model, '"a'))
        allowed = set(mask_of(matcher, model.vocab_size).tolist())
        for control in "\x01\x0b\t\n":
            assert spell(model, control)[0] not in allowed, (schema, control)
        assert spell(model, "b")[0] in allowed, schema
        bounded = "maxLength" in schema or "minLength" in schema
        escapes = not (bounded and backend_name == "xgrammar")
        assert (spell(model, "\\")[0] in allowed) == escapes, schema


def test_a_required_character_class_run_is_required(make_backend, vocab_models, backend_name,
                                                    model_name):
    """``[^,]+`` needs one character: no end token before it."""
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    for pattern in (r"[^,]+", r"x[^,]+", r"[^\n,]{1,6}"):
        matcher = backend.matcher(backend.compile(StructuredOutputsParams(regex=pattern).spec))
        if pattern.startswith("x"):
            assert matcher.accept_token(spell(model, "x")[0])
        allowed = set(mask_of(matcher, model.vocab_size).tolist())
        assert not allowed & set(model.eos_token_ids), pattern


def test_special_tokens_are_not_text(make_backend, vocab_models, backend_name, model_name):
    """BOS, padding and other special tokens never stand for their literal text: a grammar
    that allows any character (``<``, ``s``, ``>``) still allows no special token but the
    end token, and that one only where the grammar may end."""
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    special = set(model.tokenizer.all_special_ids) - set(model.eos_token_ids)
    assert special
    for params, prefix in ((StructuredOutputsParams(regex=r"[^,]+"), "a"),
                           (StructuredOutputsParams(json={"type": "string"}), '"a')):
        matcher = backend.matcher(backend.compile(params.spec))
        assert all(matcher.accept_token(t) for t in spell(model, prefix))
        allowed = set(mask_of(matcher, model.vocab_size).tolist())
        assert not allowed & special, (params.spec.kind, sorted(allowed & special))


#: Schemas using keywords outside the subset both backends implement. A backend must
#: either refuse one (so that ``auto`` falls back to the other) or honour it.
BEYOND_COMMON_SUBSET = [
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3},
     "minItems": 3, "maxItems": 4, "uniqueItems": True},
    {"type": "array", "items": {"enum": [1, "a", None]}, "maxItems": 3,
     "contains": {"type": "integer"}},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}],
     "not": {"type": "boolean"}},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
     "dependentRequired": {"a": ["b"]}, "additionalProperties": False},
    {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 5},
               {"type": "integer", "minimum": 3, "maximum": 8}]},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}],
     "if": {"type": "integer"}, "then": {"minimum": 5}},
    {"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 7},
    {"type": "object", "patternProperties": {"^a[0-9]$": {"type": "boolean"}},
     "additionalProperties": False, "maxProperties": 2},
]


@pytest.mark.parametrize("schema", BEYOND_COMMON_SUBSET,
                         ids=lambda s: "-".join(k for k in s if k not in ("type", "items")))
def test_schema_keywords_are_honoured_or_refused(make_backend, vocab_models, backend_name,
                                                 model_name, schema):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    try:
        compiled = backend.compile(StructuredOutputsParams(json=schema).spec)
    except GrammarError:
        return  # refused: the manager can fall back to another backend
    invalid = []
    for seed in range(30):
        walk = random_walk(backend.matcher(compiled), model, seed=seed)
        if walk.terminated:
            text = walk_text(model, walk.token_ids)
            try:
                jsonschema.validate(json.loads(text), schema)
            except jsonschema.ValidationError:
                invalid.append(text)
    assert not invalid, f"{backend_name} compiled {json.dumps(schema)} but let through " \
                        f"{invalid[:3]}"


def test_shipped_backends_pass_the_conformance_kit(backend_classes, vocab_models,
                                                   backend_name, model_name):
    """The kit third-party backends are held to (``llmserve.plugin_testing``)."""
    schema = {"type": "object", "properties": {"a": {"type": "array",
                                                     "items": {"type": "integer"}}}}
    check_structured_output_backend(
        backend_classes[backend_name], vocab_models[model_name].vocab_info(),
        StructuredOutputsParams(json=schema).spec, '{"a": [1, 22]}',
        bad_spec=StructuredOutputsParams(regex="(abc").spec)
