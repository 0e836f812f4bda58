"""A third-party structured-output backend is a plugin like any other.

``ChoiceOnlyBackend`` is the minimal backend of docs/plugins/hooks/
llmserve_structured_output_backends.md: it takes ``choice`` constraints only, matching each
choice's own tokenization. It passes the backend conformance kit, serves constrained requests
through the engine when selected by name, and refuses other constraints with a ``ValueError``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmserve import SamplingParams, hookimpl
from llmserve.config import EngineArgs
from llmserve.default_model import DEFAULT_MODEL_PATH
from llmserve.engine.llm_engine import LLMEngine
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
from llmserve.plugin_testing.structured_output import check_structured_output_backend
from llmserve.structured_output import (GrammarError, GrammarMatcher, StructuredOutputBackend,
                                        StructuredOutputsParams, VocabInfo)
from llmserve.tokenizer import load_tokenizer


class ChoiceMatcher(GrammarMatcher):
    def __init__(self, choices: list[tuple[int, ...]], eos: tuple[int, ...]) -> None:
        self.choices, self.eos = choices, eos
        self.accepted: list[int] = []

    def _allowed(self) -> set[int]:
        n, prefix = len(self.accepted), tuple(self.accepted)
        if self.is_terminated():
            return set()
        allowed = {c[n] for c in self.choices if len(c) > n and c[:n] == prefix}
        if prefix in self.choices:
            allowed |= set(self.eos)
        return allowed

    def accept_token(self, token_id: int) -> bool:
        if token_id not in self._allowed():
            return False
        self.accepted.append(token_id)
        return True

    def rollback(self, num_tokens: int) -> None:
        del self.accepted[len(self.accepted) - num_tokens:]

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        words = bitmask[row].view(np.uint32)
        words[:] = 0
        for token in self._allowed():
            words[token // 32] |= np.uint32(1 << (token % 32))

    def is_terminated(self) -> bool:
        return bool(self.accepted) and self.accepted[-1] in self.eos


class ChoiceOnlyBackend(StructuredOutputBackend):
    name = "choice-only"

    def compile(self, spec):
        if spec.kind != "choice":
            raise GrammarError(f"choice-only takes choice constraints, not {spec.kind}")
        encode = self.vocab.tokenizer.encode
        return [tuple(encode(c, add_special_tokens=False)) for c in json.loads(spec.source)]

    def matcher(self, compiled):
        return ChoiceMatcher(compiled, self.vocab.eos_token_ids)


class ChoiceOnlyPlugin:
    LLMSERVE_PLUGIN_API = ">=1.1,<2"

    @hookimpl
    def llmserve_structured_output_backends(self):
        return {"choice-only": ChoiceOnlyBackend}


COLOURS = ["red", "green", "blue", "purple"]


def test_example_backend_passes_the_conformance_kit():
    vocab = VocabInfo(load_tokenizer(DEFAULT_MODEL_PATH), 4096, (2,))
    check_structured_output_backend(
        ChoiceOnlyBackend, vocab, StructuredOutputsParams(choice=COLOURS).spec, "purple",
        bad_spec=StructuredOutputsParams(regex="a+").spec)


def test_conformance_kit_catches_a_matcher_that_ignores_the_grammar():
    class AnythingGoes(ChoiceMatcher):
        def fill_bitmask(self, bitmask, row):
            bitmask[row] = -1

    class Sloppy(ChoiceOnlyBackend):
        def matcher(self, compiled):
            return AnythingGoes(compiled, self.vocab.eos_token_ids)

    vocab = VocabInfo(load_tokenizer(DEFAULT_MODEL_PATH), 4096, (2,))
    with pytest.raises(AssertionError, match="the mask allows token .* accept_token refuses"):
        check_structured_output_backend(Sloppy, vocab,
                                        StructuredOutputsParams(choice=COLOURS).spec, "red")


@pytest.fixture(scope="module")
def engine():
    pm = fresh_plugin_manager()
    with registered_plugin(pm, ChoiceOnlyPlugin(), "choice-only"):
        yield LLMEngine(EngineArgs(model=str(DEFAULT_MODEL_PATH),
                                   structured_outputs_backend="choice-only",
                                   num_gpu_blocks_override=64), pm)


def run(engine, params: SamplingParams, rid: str):
    engine.add_request(rid, "The colour is", params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    (out,) = outputs
    return out.outputs[0]


def test_engine_serves_the_plugin_backend_by_name(engine):
    texts = set()
    for seed in range(6):
        out = run(engine, SamplingParams(
            structured_outputs=StructuredOutputsParams(choice=COLOURS), temperature=5.0,
            seed=seed, max_tokens=10), f"c{seed}")
        assert out.finish_reason == "stop"
        assert out.text in COLOURS
        texts.add(out.text)
    assert len(texts) >= 2  # sampled, not a fixed answer


def test_constraint_the_plugin_refuses_is_a_value_error(engine):
    with pytest.raises(ValueError, match="choice-only takes choice constraints, not regex"):
        engine.add_request("bad", "x", SamplingParams(
            structured_outputs=StructuredOutputsParams(regex="[0-9]+")))
    assert not engine.has_unfinished_requests()
    assert engine.core.kv_manager.num_free_blocks == engine.core.num_blocks
