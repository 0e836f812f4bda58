"""The xgrammar backend (the default): compiled grammars with precomputed token masks."""

from __future__ import annotations

import json
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
        info = _tokenizer_info(xgr, vocab)
        # The core caches compiled grammars by key; xgrammar's own cache would hold them twice.
        self._compiler = xgr.GrammarCompiler(info, max_threads=_threads(),
                                             cache_enabled=False)
        self._batch = xgr.BatchGrammarMatcher(max_threads=_threads())

    def compile(self, spec: GrammarSpec) -> Any:
        compiler = self._compiler
        try:
            if spec.kind in ("json", "json_object"):
                schema = spec.source if spec.kind == "json" else JSON_OBJECT_SCHEMA
                _check_enforced(json.loads(schema))
                layout = (dict(any_whitespace=True, max_whitespace_cnt=MAX_JSON_WHITESPACE)
                          if spec.any_whitespace
                          else dict(any_whitespace=False, separators=(",", ":")))
                grammar = self._xgr.Grammar.from_json_schema(schema, **layout)
                return compiler.compile_grammar(_json_safe_bounded_strings(self._xgr, grammar))
            if spec.kind == "regex":
                return compiler.compile_regex(spec.source)
            if spec.kind == "choice":
                rule = " | ".join(quoted(c) for c in choice_alternatives(spec))
                return compiler.compile_grammar(f"root ::= {rule}")
            if is_ebnf(spec.source):
                return compiler.compile_grammar(spec.source)
            return compiler.compile_lark(spec.source)
        except GrammarError:
            raise
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


#: JSON-schema keywords xgrammar 0.2 compiles but does not enforce (it lets through
#: documents that break them); ``oneOf`` is read as ``anyOf``. String ``minLength`` and
#: ``maxLength`` switch it to a string rule that admits raw control characters and refuses
#: escapes. A schema using one is refused, so ``auto`` falls back to guidance.
UNENFORCED_KEYWORDS = frozenset({
    "uniqueItems", "contains", "minContains", "maxContains", "not", "if", "then", "else",
    "dependentRequired", "dependentSchemas", "dependencies", "oneOf",
    "unevaluatedProperties", "unevaluatedItems",
})

#: Keywords whose value is a subschema, a list of them, or a name -> subschema map.
_SUBSCHEMA = frozenset({"additionalProperties", "items", "additionalItems", "not", "if",
                        "then", "else", "contains", "propertyNames", "unevaluatedItems",
                        "unevaluatedProperties"})
_SUBSCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                             "dependentSchemas"})


def _check_enforced(schema: Any) -> None:
    """Raise ``GrammarError`` naming the first keyword of ``schema`` (at any depth) in
    ``UNENFORCED_KEYWORDS``. Only schema positions are walked: a property called ``not``
    is a name, not a keyword."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in UNENFORCED_KEYWORDS:
            raise GrammarError(f"xgrammar does not enforce the JSON-schema keyword {key!r}; "
                               f"use the guidance backend (or auto) for this schema")
        if key in _SUBSCHEMA:
            for sub in value if isinstance(value, list) else [value]:
                _check_enforced(sub)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for sub in value:
                _check_enforced(sub)
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                _check_enforced(sub)


#: The character rule xgrammar writes for a string with ``minLength``/``maxLength``: it
#: admits raw control characters, which JSON forbids in strings.
_BOUNDED_STRING_CHARACTER = re.compile(r'^(\w+_characters) ::= \(\(\[\^\\"\\\\\\r\\n\]\)\)$',
                                       re.MULTILINE)


def _json_safe_bounded_strings(xgr, grammar):
    """``grammar`` with each length-bounded string's character being a JSON string character
    that needs no escape: anything but a control character, ``"`` or ``\\``. Escapes stay
    out: a character rule with an alternative in it makes xgrammar's bounded repetition
    compute masks at run time, 16x the per-step mask cost on a 128k vocabulary (measured;
    benchmarks/README.md). Length-bounded strings under xgrammar are therefore a sound
    subset: valid JSON, never ``\\n`` or ``\\"`` inside; guidance allows escapes there."""
    text = str(grammar)
    fixed = _BOUNDED_STRING_CHARACTER.sub(
        lambda m: f'{m.group(1)} ::= (([^\\0-\\x1f\\"\\\\]))', text)
    return grammar if fixed == text else xgr.Grammar.from_ebnf(fixed)


def _tokenizer_info(xgr, vocab: VocabInfo):
    """xgrammar's view of the vocabulary, with the tokenizer's special tokens (BOS, padding,
    chat markers) as special. ``from_huggingface`` reads them as their literal text, so a
    grammar that allows ``<`` ... ``>`` (any ``[^,]+``) would allow ``</s>`` mid-output, and
    allow the end token where the grammar needs one more character."""
    tokenizer = vocab.tokenizer
    detected = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab.vocab_size,
                                                  stop_token_ids=list(vocab.eos_token_ids))
    encoded = [""] * vocab.vocab_size
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < vocab.vocab_size:
            encoded[token_id] = token
    special = set(tokenizer.all_special_ids)
    special.update(i for i, added in tokenizer.added_tokens_decoder.items() if added.special)
    for token_id in special:
        if token_id < vocab.vocab_size:
            encoded[token_id] = ""  # xgrammar treats empty entries as special tokens
    return xgr.TokenizerInfo(encoded, detected.vocab_type, vocab_size=vocab.vocab_size,
                             stop_token_ids=list(vocab.eos_token_ids),
                             add_prefix_space=detected.add_prefix_space)


def _threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _first_line(exc: BaseException) -> str:
    """The message of a native library's exception, without its log prefix
    (``[hh:mm:ss] /path/file.cc:94: ``)."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text)
