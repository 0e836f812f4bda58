"""The xgrammar backend (the default): compiled grammars with precomputed token masks."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmserve.structured_output.backend import (GrammarError, GrammarMatcher,
                                                StructuredOutputBackend, VocabInfo)
from llmserve.structured_output.backends import (JSON_OBJECT_SCHEMA, MAX_JSON_WHITESPACE,
                                                 choice_alternatives, is_ebnf, quoted)
from llmserve.structured_output.params import GrammarSpec


class XgrammarMatcher(GrammarMatcher):
    __slots__ = ("matcher",)

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def accept_token(self, token_id: int) -> bool:
        return self.matcher.accept_token(token_id)

    def rollback(self, num_tokens: int) -> None:
        self.matcher.rollback(num_tokens)

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()


class XgrammarBackend(StructuredOutputBackend):
    name = "xgrammar"

    def __init__(self, vocab: VocabInfo) -> None:
        super().__init__(vocab)
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(vocab.tokenizer, vocab_size=vocab.vocab_size,
                                                  stop_token_ids=list(vocab.eos_token_ids))
        # The core caches compiled grammars by key; xgrammar's own cache would hold them twice.
        self._compiler = xgr.GrammarCompiler(info, max_threads=_threads(),
                                             cache_enabled=False)
        self._batch = xgr.BatchGrammarMatcher(max_threads=_threads())

    def compile(self, spec: GrammarSpec) -> Any:
        compiler = self._compiler
        try:
            if spec.kind in ("json", "json_object"):
                schema = spec.source if spec.kind == "json" else JSON_OBJECT_SCHEMA
                return compiler.compile_json_schema(
                    schema, any_whitespace=spec.any_whitespace,
                    max_whitespace_cnt=MAX_JSON_WHITESPACE if spec.any_whitespace else None)
            if spec.kind == "regex":
                return compiler.compile_regex(spec.source)
            if spec.kind == "choice":
                rule = " | ".join(quoted(c) for c in choice_alternatives(spec))
                return compiler.compile_grammar(f"root ::= {rule}")
            if is_ebnf(spec.source):
                return compiler.compile_grammar(spec.source)
            return compiler.compile_lark(spec.source)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses
            raise GrammarError(f"xgrammar cannot compile the {spec.kind} constraint: "
                               f"{_first_line(exc)}") from None

    def matcher(self, compiled: Any) -> GrammarMatcher:
        return XgrammarMatcher(self._xgr.GrammarMatcher(compiled))

    def fill_bitmasks(self, matchers: Sequence[GrammarMatcher], bitmask: np.ndarray,
                      rows: Sequence[int]) -> None:
        if len(matchers) == 1:
            matchers[0].fill_bitmask(bitmask, rows[0])
            return
        self._batch.batch_fill_next_token_bitmask([m.matcher for m in matchers], bitmask,
                                                  list(rows))


def _threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _first_line(exc: BaseException) -> str:
    """The message of a native library's exception, without its log prefix
    (``[hh:mm:ss] /path/file.cc:94: ``)."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text)
