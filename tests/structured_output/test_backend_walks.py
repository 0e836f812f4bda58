"""Each grammar backend on each vocabulary, driven by random walks: whatever its masks let
through must be what the constraint describes, judged by an independent recogniser.

Seeds are fixed so that a failure reproduces; every test draws its own schemas and walks.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict, Field

from grammar_walk import random_walk, walk_text
from llmserve.structured_output import StructuredOutputsParams
from random_schemas import SchemaGenerator
from recognisers import (ARITHMETIC_EBNF, PAIRS_LARK, has_whitespace_outside_strings,
                         is_arithmetic, is_pairs)
from vocab_models import BACKEND_NAMES, MODEL_NAMES, spell

#: Random schemas per (backend, model), and walks per schema.
NUM_SCHEMAS = 40
WALKS_PER_SCHEMA = 3

#: Walks that reach an end token within their step budget, at least. The walk only ends by
#: choice where the grammar allows it; a backend whose masks trap it (never offering the
#: closing token) ends almost no walk.
MIN_TERMINATED = 0.85

pytestmark = pytest.mark.parametrize("model_name", MODEL_NAMES)
backends = pytest.mark.parametrize("backend_name", BACKEND_NAMES)


def walk_outputs(backend, model, params: StructuredOutputsParams, num_walks: int,
                 seed: int, prefix: str = "", **walk_args) -> tuple[list[str], int]:
    """The texts of the walks that terminated, and how many walks there were. With a
    ``prefix``, every other walk starts after it (spelt token by token), to reach deep
    into a grammar that a walk from its start enters rarely."""
    compiled = backend.compile(params.spec)
    texts = []
    for i in range(num_walks):
        matcher = backend.matcher(compiled)
        start = spell(model, prefix) if i % 2 else []
        assert all(matcher.accept_token(t) for t in start), prefix
        walk = random_walk(matcher, model, seed=seed * 1000 + i, **walk_args)
        if walk.terminated:
            texts.append(walk_text(model, start + walk.token_ids))
    return texts, num_walks


def assert_mostly_terminated(num_terminated: int, num_walks: int) -> None:
    assert num_terminated >= MIN_TERMINATED * num_walks, (
        f"only {num_terminated} of {num_walks} walks ended")


@backends
def test_random_json_schemas(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    generator = SchemaGenerator(seed=MODEL_NAMES.index(model_name))
    invalid, num_terminated = [], 0
    for i in range(NUM_SCHEMAS):
        schema = generator.schema()
        texts, _ = walk_outputs(backend, model, StructuredOutputsParams(json=schema),
                                WALKS_PER_SCHEMA, seed=i)
        num_terminated += len(texts)
        for text in texts:
            try:
                jsonschema.validate(json.loads(text), schema)
            except (ValueError, jsonschema.ValidationError) as exc:
                invalid.append(f"{text!r} for {json.dumps(schema)}: {str(exc)[:120]}")
    assert not invalid, f"{len(invalid)} invalid outputs:\n" + "\n".join(invalid[:5])
    assert_mostly_terminated(num_terminated, NUM_SCHEMAS * WALKS_PER_SCHEMA)


@backends
def test_compact_json_has_no_whitespace(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    generator = SchemaGenerator(seed=100 + MODEL_NAMES.index(model_name))
    num_terminated = 0
    for i in range(10):
        schema = generator.object(0)
        params = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
        texts, _ = walk_outputs(backend, model, params, 2, seed=i)
        num_terminated += len(texts)
        for text in texts:
            value = json.loads(text)
            jsonschema.validate(value, schema)
            assert not has_whitespace_outside_strings(text), text
    assert_mostly_terminated(num_terminated, 20)


@backends
def test_json_object(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    texts, n = walk_outputs(backend, model, StructuredOutputsParams(json_object=True), 20,
                            seed=7, max_steps=400, p_eos=0.9)
    for text in texts:
        assert isinstance(json.loads(text), dict), text
    assert len(texts) >= n // 2, f"{len(texts)} of {n} walks ended"


#: Digits are spelt ``[0-9]``: ``\d`` is any Unicode digit to llguidance (and to Python's
#: ``re``, whose Unicode tables may be older), only ASCII digits to xgrammar.
REGEXES = [
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r"[a-z]{2,8}@[a-z]{2,6}\.(com|org)",
    r"(ab|cd)+x?",
    r"[A-Z][a-z]{1,5}( [A-Z][a-z]{1,5}){0,2}",
    r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,2})?",
    r"[^\n,]{1,6}(,[^\n,]{1,6}){0,2}",
    r"(yes|no|maybe)[!?.]",
    r"é+[ü日]?",
]


@backends
@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_outputs_fullmatch(make_backend, vocab_models, backend_name, model_name,
                                 pattern):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    texts, n = walk_outputs(backend, model, StructuredOutputsParams(regex=pattern), 8,
                            seed=REGEXES.index(pattern))
    for text in texts:
        assert re.fullmatch(pattern, text), text
    assert_mostly_terminated(len(texts), n)


CHOICES = ["red", "green", "dark red", "redder", "日本", "say \"hi\""]


@backends
def test_choice_outputs_are_members(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    texts, n = walk_outputs(backend, model, StructuredOutputsParams(choice=CHOICES), 30,
                            seed=3)
    assert set(texts) <= set(CHOICES), set(texts) - set(CHOICES)
    assert len(set(texts)) >= 3
    assert len(texts) == n  # every branch of a finite choice ends within the budget


@backends
def test_ebnf_arithmetic(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    texts, n = walk_outputs(backend, model, StructuredOutputsParams(grammar=ARITHMETIC_EBNF),
                            40, seed=11, prefix="((1+", p_eos=0.3, max_steps=300)
    bad = [t for t in texts if not is_arithmetic(t)]
    assert not bad, bad
    assert any(t.startswith("((1+") for t in texts) and any("-" in t for t in texts)
    assert_mostly_terminated(len(texts), n)


@backends
def test_lark_pairs(make_backend, vocab_models, backend_name, model_name):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    texts, n = walk_outputs(backend, model, StructuredOutputsParams(grammar=PAIRS_LARK), 40,
                            seed=13, prefix="k=[[", p_eos=0.3, max_steps=300)
    bad = [t for t in texts if not is_pairs(t)]
    assert not bad, bad
    assert any(t.startswith("k=[[") for t in texts) and any("," in t for t in texts)
    assert_mostly_terminated(len(texts), n)


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=8)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=6)
    age: int = Field(ge=0, le=130)
    score: float
    active: bool
    role: Literal["admin", "user", "guest"]
    tags: list[Literal["a", "b", "c"]] = Field(default_factory=list, max_length=3)
    address: Optional[Address] = None


@backends
@pytest.mark.parametrize("model_cls", [Address, Person])
def test_pydantic_models(make_backend, vocab_models, backend_name, model_name, model_cls):
    backend, model = make_backend(backend_name, model_name), vocab_models[model_name]
    texts, n = walk_outputs(backend, model, StructuredOutputsParams(json=model_cls), 12,
                            seed=17, max_steps=160)
    for text in texts:
        model_cls.model_validate_json(text)
    assert_mostly_terminated(len(texts), n)


def test_unicode_classes_with_guidance(make_backend, vocab_models, model_name):
    """``\\p{..}`` classes, which llguidance reads and Python's ``re`` does not."""
    backend, model = make_backend("guidance", model_name), vocab_models[model_name]
    texts, n = walk_outputs(backend, model, StructuredOutputsParams(regex=r"\p{Lu}\p{Ll}{1,4}"),
                            12, seed=19)
    for text in texts:
        assert 2 <= len(text) <= 5, text
        assert unicodedata.category(text[0]) == "Lu", text
        assert all(unicodedata.category(c) == "Ll" for c in text[1:]), text
    assert_mostly_terminated(len(texts), n)
