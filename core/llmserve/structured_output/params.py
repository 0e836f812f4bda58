"""What a request constrains its output to: vLLM's ``StructuredOutputsParams``.

Exactly one constraint is set. Everything is normalised at construction into a ``GrammarSpec``
(a kind and a source string), which is both what a backend compiles and the key compiled
grammars are cached under, so two requests with the same schema share one compilation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel

#: The kinds of constraint, in the order vLLM lists them.
GrammarKind = Literal["json", "json_object", "regex", "choice", "grammar"]

_CONSTRAINTS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class GrammarSpec:
    """One constraint, normalised: the unit a backend compiles and the cache key.

    ``source`` is a JSON schema (sorted keys, compact) for ``json``, ``"{}"`` for
    ``json_object``, the pattern for ``regex``, a JSON list of strings for ``choice``, the
    grammar text for ``grammar`` (EBNF or Lark, the backend tells them apart). ``any_whitespace`` is False when the request disabled
    free whitespace in JSON.
    """

    kind: GrammarKind
    source: str
    any_whitespace: bool = True

    def describe(self) -> str:
        """A short human label for error messages and logs."""
        text = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        return f"{self.kind} {text!r}"


def _is_pydantic_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Constrain a request's output (``SamplingParams(structured_outputs=...)``).

    Set exactly one of ``json`` (a JSON schema as a dict or a JSON string, or a Pydantic model
    class), ``json_object`` (any JSON object), ``regex`` (the output fully matches it),
    ``choice`` (the output is one of these strings) or ``grammar`` (an EBNF or Lark grammar).
    The field names and meanings are vLLM's. A bad value raises ``ValueError`` naming the
    field when the object is built.
    """

    json: Optional[Union[str, dict[str, Any], type]] = None
    json_object: Optional[bool] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None
    #: JSON only: no whitespace between tokens (compact output), as vLLM's flag of that name.
    disable_any_whitespace: bool = False
    #: Use the engine's first-choice backend only: no fallback under ``auto``.
    disable_fallback: bool = False
    #: The normalised constraint: what a backend compiles, and its cache key.
    spec: GrammarSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = [name for name in _CONSTRAINTS
                 if getattr(self, name) is not None and getattr(self, name) is not False]
        if len(given) != 1:
            raise ValueError("structured_outputs must set exactly one of "
                             f"{', '.join(_CONSTRAINTS)}; got {given or 'none'}")
        object.__setattr__(self, "spec", _normalise(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StructuredOutputsParams":
        """Build from a request body's ``structured_outputs`` object; an unknown key is a
        ``ValueError`` naming it."""
        if not isinstance(values, dict):
            raise ValueError("structured_outputs must be an object")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"structured_outputs has unknown fields {unknown}; allowed: "
                             f"{sorted(known)}")
        return cls(**values)


def _normalise(p: StructuredOutputsParams) -> GrammarSpec:
    ws = not p.disable_any_whitespace
    if p.json is not None:
        return GrammarSpec("json", schema_source(p.json, "structured_outputs.json"), ws)
    if p.json_object:
        return GrammarSpec("json_object", "{}", ws)
    if p.regex is not None:
        if not isinstance(p.regex, str) or not p.regex:
            raise ValueError("structured_outputs.regex must be a non-empty pattern")
        return GrammarSpec("regex", p.regex)
    if p.choice is not None:
        if isinstance(p.choice, str) or not p.choice or not all(isinstance(c, str) and c for c in p.choice):
            raise ValueError("structured_outputs.choice must be a non-empty list of non-empty "
                             "strings")
        return GrammarSpec("choice", json.dumps(list(p.choice)))
    if not isinstance(p.grammar, str) or not p.grammar.strip():
        raise ValueError("structured_outputs.grammar must be a non-empty grammar")
    return GrammarSpec("grammar", p.grammar)


def schema_source(schema: Any, field: str) -> str:
    """A JSON schema given as a dict, a JSON string or a Pydantic model class, as canonical
    JSON text; raises ``ValueError`` naming ``field`` when it is none of those."""
    if _is_pydantic_model(schema):
        schema = schema.model_json_schema()
    elif isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ValueError(f"{field} is not valid JSON: {exc}") from None
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise ValueError(f"{field} must be a JSON schema object (a dict, a JSON string or a "
                         f"Pydantic model class), got {type(schema).__name__}")
    try:
        return json.dumps(schema, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field} is not JSON-serialisable: {exc}") from None
