"""``StructuredOutputManager``: compiling off the step loop (futures, the cache, errors, the
``auto`` fallback) and the batch token mask, on the shipped backends and real vocabularies."""

from __future__ import annotations

import json
from concurrent.futures import Future

import numpy as np
import pytest

from grammar_walk import allowed_tokens, random_walk, walk_text
from llmserve.structured_output import GrammarError, StructuredOutputsParams
from llmserve.structured_output.manager import StructuredOutputManager
from random_schemas import SchemaGenerator
from vocab_models import BACKEND_NAMES, spell

MODEL = "byte_fallback"  # padded logits: the mask is wider than the tokenizer

#: Constraints xgrammar refuses and llguidance compiles, with a check of an output.
XGRAMMAR_REFUSES = [
    pytest.param(StructuredOutputsParams(regex=r"\p{Lu}\p{Ll}{1,4}"),
                 lambda text: text[:1].isupper() and text[1:].islower(), id="regex-unicode"),
    pytest.param(StructuredOutputsParams(grammar='%llguidance {}\nstart: "x" NUM\nNUM: /[0-9]/'),
                 lambda text: len(text) == 2 and text[0] == "x" and text[1].isdigit(),
                 id="lark-directive"),
]


class Loader:
    """A ``vocab_loader`` that counts its calls."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.model.vocab_info()


@pytest.fixture
def make_manager(vocab_models, backend_classes):
    managers = []

    def make(choice: str = "auto"):
        loader = Loader(vocab_models[MODEL])
        manager = StructuredOutputManager(backend_classes, choice, loader,
                                          vocab_models[MODEL].vocab_size)
        managers.append(manager)
        return manager, loader

    yield make
    for manager in managers:
        manager.shutdown()


def test_submit_returns_a_future_of_a_compiled_grammar(make_manager, vocab_models):
    manager, loader = make_manager()
    assert loader.calls == 0  # nothing is read before the first constraint arrives
    future = manager.submit(StructuredOutputsParams(json={"type": "integer"}))
    assert isinstance(future, Future)
    compiled = future.result(timeout=30)
    assert compiled.backend.name == "xgrammar"  # auto's first choice
    model = vocab_models[MODEL]
    walk = random_walk(compiled.start().matcher, model, seed=0)
    assert walk.terminated and isinstance(json.loads(walk_text(model, walk.token_ids)), int)
    futures = [manager.submit(StructuredOutputsParams(json=SchemaGenerator(i).schema()))
               for i in range(12)]
    assert all(f.result(timeout=30).backend.name == "xgrammar" for f in futures)
    manager.submit(StructuredOutputsParams(regex=r"\p{Lu}")).result(timeout=30)
    assert loader.calls == 1  # once, for both backends


def test_identical_constraints_share_one_compilation(make_manager):
    manager, _ = make_manager()
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                               "b": {"type": "string"}}}
    first = manager.submit(StructuredOutputsParams(json=schema))
    reordered = {"properties": {"b": {"type": "string"}, "a": {"type": "integer"}},
                 "type": "object"}
    assert manager.submit(StructuredOutputsParams(json=reordered)) is first
    assert manager.submit(StructuredOutputsParams(json=json.dumps(schema))) is first
    compact = manager.submit(StructuredOutputsParams(json=schema, disable_any_whitespace=True))
    assert compact is not first
    no_fallback = manager.submit(StructuredOutputsParams(json=schema, disable_fallback=True))
    assert no_fallback is not first
    assert first.result(timeout=30).compiled is not compact.result(timeout=30).compiled
    assert manager.submit(StructuredOutputsParams(regex="a+")) is \
        manager.submit(StructuredOutputsParams(regex="a+"))


def test_a_failed_compilation_holds_a_grammar_error(make_manager):
    manager, _ = make_manager()
    future = manager.submit(StructuredOutputsParams(regex="(abc"))
    error = future.exception(timeout=30)
    assert isinstance(error, GrammarError) and isinstance(error, ValueError)
    message = str(error)
    assert "xgrammar cannot compile the regex constraint" in message
    assert "llguidance cannot compile the regex constraint" in message  # auto tried both
    assert manager.submit(StructuredOutputsParams(regex="(abc")) is future  # cached too
    with pytest.raises(GrammarError, match="parenthesis is not closed"):
        future.result()


@pytest.mark.parametrize("params, check", XGRAMMAR_REFUSES)
def test_auto_falls_back_to_guidance(make_manager, vocab_models, params, check):
    manager, _ = make_manager()
    compiled = manager.submit(params).result(timeout=30)
    assert compiled.backend.name == "guidance"
    model = vocab_models[MODEL]
    texts = []
    for seed in range(6):
        walk = random_walk(compiled.start().matcher, model, seed=seed)
        if walk.terminated:
            texts.append(walk_text(model, walk.token_ids))
    assert len(texts) >= 5 and all(check(t) for t in texts), texts


@pytest.mark.parametrize("params, check", XGRAMMAR_REFUSES)
def test_disable_fallback_keeps_the_first_choice(make_manager, params, check):
    manager, _ = make_manager()
    strict = StructuredOutputsParams(**{**_constraint(params), "disable_fallback": True})
    error = manager.submit(strict).exception(timeout=30)
    assert isinstance(error, GrammarError)
    assert str(error).startswith("xgrammar cannot compile")
    assert "llguidance cannot compile" not in str(error)
    only_xgrammar, _ = make_manager("xgrammar")
    assert isinstance(only_xgrammar.submit(params).exception(timeout=30), GrammarError)
    only_guidance, _ = make_manager("guidance")
    assert only_guidance.submit(strict).result(timeout=30).backend.name == "guidance"


def _constraint(params: StructuredOutputsParams) -> dict:
    return {name: getattr(params, name) for name in ("json", "regex", "grammar")
            if getattr(params, name) is not None}


def test_unknown_backend_choice_is_rejected(backend_classes, vocab_models):
    with pytest.raises(ValueError, match=r"'auto' or one of \['guidance', 'xgrammar'\]"):
        StructuredOutputManager(backend_classes, "outlines", vocab_models[MODEL].vocab_info,
                                vocab_models[MODEL].vocab_size)


def test_fill_bitmask_rows(make_manager, vocab_models):
    """One row per entry; ``None`` rows and terminated grammars allow every token; rows of
    different backends are filled in one call."""
    manager, _ = make_manager()
    model = vocab_models[MODEL]
    json_grammar = manager.submit(StructuredOutputsParams(json={"type": "boolean"}))
    unicode_grammar = manager.submit(StructuredOutputsParams(regex=r"\p{Lu}+"))
    done = manager.submit(StructuredOutputsParams(choice=["ok"])).result(timeout=30).start()
    assert all(done.matcher.accept_token(t) for t in spell(model, "ok"))
    assert done.matcher.accept_token(model.eos_token_ids[0]) and done.matcher.is_terminated()
    a = json_grammar.result(timeout=30).start()
    b = unicode_grammar.result(timeout=30).start()
    assert (a.backend.name, b.backend.name) == ("xgrammar", "guidance")
    bitmask = manager.fill_bitmask([None, a, None, done, b])
    assert bitmask.shape == (5, (model.vocab_size + 31) // 32) and bitmask.dtype == np.int32
    assert (bitmask[[0, 2, 3]] == -1).all()
    for row, grammar in ((1, a), (4, b)):
        alone = np.zeros((1, bitmask.shape[1]), dtype=np.int32)
        grammar.matcher.fill_bitmask(alone, 0)
        assert np.array_equal(bitmask[row], alone[0])
        assert 0 < allowed_tokens(bitmask[row], model.vocab_size).size < len(model.tokenizer)
    assert (manager.fill_bitmask([None, None]) == -1).all()
    assert manager.fill_bitmask([]).shape == (0, bitmask.shape[1])


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_a_completed_grammar_allows_only_the_end_token(make_manager, vocab_models,
                                                       backend_name):
    """Once the output is complete, the next sampled token must be an end token: a row
    that allowed everything would let the model run on past the grammar."""
    manager, _ = make_manager(backend_name)
    model = vocab_models[MODEL]
    for params, text in ((StructuredOutputsParams(choice=["yes"]), "yes"),
                         (StructuredOutputsParams(regex="[0-9]{2}"), "42")):
        grammar = manager.submit(params).result(timeout=30).start()
        assert all(grammar.matcher.accept_token(t) for t in spell(model, text))
        row = manager.fill_bitmask([grammar])[0]
        assert allowed_tokens(row, model.vocab_size).tolist() == list(model.eos_token_ids)
