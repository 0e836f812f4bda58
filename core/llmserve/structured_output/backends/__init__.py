"""The backends the core ships: xgrammar (the default) and llguidance ("guidance")."""

from __future__ import annotations

import json

from llmserve.structured_output.params import GrammarSpec


def is_ebnf(grammar: str) -> bool:
    """EBNF (GBNF) grammars define rules with ``::=``; Lark grammars use ``name: ...``."""
    return "::=" in grammar


def choice_alternatives(spec: GrammarSpec) -> list[str]:
    """The strings of a ``choice`` constraint."""
    return json.loads(spec.source)


def quoted(text: str) -> str:
    """A grammar string literal for ``text`` (JSON escapes, which EBNF and Lark both read)."""
    return json.dumps(text, ensure_ascii=False)


#: Longest run of whitespace JSON may have between two tokens when whitespace is free: room
#: for pretty-printed nesting, but a model cannot stall in an endless run of blanks.
MAX_JSON_WHITESPACE = 20

#: ``json_object`` means "any JSON object" (OpenAI's response_format), not any JSON value.
JSON_OBJECT_SCHEMA = '{"type":"object"}'
