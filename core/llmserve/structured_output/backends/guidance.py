"""The llguidance backend ("guidance"): an Earley parser with lazily computed masks, which
takes grammars (recursive Lark, full JSON schema) that xgrammar may not."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmserve.structured_output.backend import (GrammarError, GrammarMatcher,
                                                StructuredOutputBackend, VocabInfo)
from llmserve.structured_output.backends import (JSON_OBJECT_SCHEMA, MAX_JSON_WHITESPACE,
                                                 choice_alternatives, is_ebnf, quoted)
from llmserve.structured_output.backends.xgrammar import _first_line
from llmserve.structured_output.params import GrammarSpec


def gbnf_to_lark(source: str) -> str:
    from llguidance.gbnf_to_lark import gbnf_to_lark as convert

    return convert(source)


class GuidanceMatcher(GrammarMatcher):
    """llguidance stops as soon as the grammar cannot go on, before any EOS; this matcher
    terminates only once the EOS that then alone is allowed was accepted, as xgrammar's do,
    so every backend ends a request on its end token.

    A stopped llguidance matcher takes that EOS without counting it, so rolling it back must
    not reach llguidance (its ``rollback(1)`` would undo the token before). A refused token
    goes through ``try_consume_tokens``, which leaves the state as it was; ``consume_token``
    would put the matcher in a permanent error state."""

    __slots__ = ("matcher", "_fill", "_eos", "_ended_at", "_num_accepted", "_end_uncounted")

    def __init__(self, matcher: Any, fill, eos_token_ids: frozenset[int]) -> None:
        self.matcher = matcher
        self._fill = fill
        self._eos = eos_token_ids
        #: Tokens accepted when the end token was; None while it was not.
        self._ended_at: int | None = None
        self._num_accepted = 0
        #: The accepted end token is one llguidance did not count.
        self._end_uncounted = False

    def accept_token(self, token_id: int) -> bool:
        if self._ended_at is not None:
            return False
        if token_id in self._eos and self.matcher.is_stopped():
            if self.matcher.is_error():
                return False
            self._end_uncounted = True
        elif self.matcher.try_consume_tokens([token_id]) != 1:
            return False
        self._num_accepted += 1
        if token_id in self._eos:
            self._ended_at = self._num_accepted
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        counted = num_tokens
        if self._ended_at is not None:  # the end token is the last one accepted
            self._ended_at = None
            if self._end_uncounted:
                self._end_uncounted = False
                counted -= 1
        if counted:
            self.matcher.rollback(counted)
        self._num_accepted -= num_tokens

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self._fill(self.matcher, bitmask, row)

    def is_terminated(self) -> bool:
        return self._ended_at is not None


class GuidanceBackend(StructuredOutputBackend):
    name = "guidance"

    def __init__(self, vocab: VocabInfo) -> None:
        super().__init__(vocab)
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        self._llg = llguidance
        self._np = llguidance.numpy
        self._tokenizer = llguidance.hf.from_tokenizer(vocab.tokenizer,
                                                       n_vocab=vocab.vocab_size,
                                                       eos_token=list(vocab.eos_token_ids))
        self._eos = frozenset(vocab.eos_token_ids)
        self._executor = llguidance.LLExecutor(max(1, min(8, (os.cpu_count() or 2) // 2)))

    def compile(self, spec: GrammarSpec) -> Any:
        llg = self._llg
        try:
            grammar = self._grammar(spec)
            ok, error = _validate(llg, grammar, self._tokenizer)
        except Exception as exc:  # llguidance raises ValueError/RuntimeError on bad input
            raise GrammarError(f"llguidance cannot compile the {spec.kind} constraint: "
                               f"{_first_line(exc)}") from None
        if not ok:
            raise GrammarError(f"llguidance cannot compile the {spec.kind} constraint: "
                               f"{error}")
        return grammar

    def _grammar(self, spec: GrammarSpec) -> str:
        m = self._llg.LLMatcher
        ws = ({"whitespace_pattern": f"[\\x20\\x0A\\x0D\\x09]{{0,{MAX_JSON_WHITESPACE}}}"}
              if spec.any_whitespace else {"whitespace_flexible": False})
        if spec.kind == "json":
            return m.grammar_from_json_schema(spec.source, defaults=ws)
        if spec.kind == "json_object":
            return m.grammar_from_json_schema(JSON_OBJECT_SCHEMA, defaults=ws)
        if spec.kind == "regex":
            return m.grammar_from_regex(spec.source)
        if spec.kind == "choice":
            rule = " | ".join(quoted(c) for c in choice_alternatives(spec))
            return m.grammar_from_lark(f"start: {rule}")
        source = gbnf_to_lark(spec.source) if is_ebnf(spec.source) else spec.source
        return m.grammar_from_lark(source)

    def matcher(self, compiled: Any) -> GrammarMatcher:
        return GuidanceMatcher(self._llg.LLMatcher(self._tokenizer, compiled),
                               self._np.fill_next_token_bitmask, self._eos)

    def fill_bitmasks(self, matchers: Sequence[GrammarMatcher], bitmask: np.ndarray,
                      rows: Sequence[int]) -> None:
        self._np.fill_next_token_bitmask_par(
            self._executor, [(m.matcher, row) for m, row in zip(matchers, rows)], bitmask)


def _validate(llg, grammar: str, tokenizer) -> tuple[bool, str]:
    result = llg.LLMatcher.validate_grammar(grammar, tokenizer)
    if isinstance(result, tuple):
        return result[0], result[1]
    return not result, result  # an empty message means valid
