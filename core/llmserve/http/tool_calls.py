"""Tool calling in chat completions, with vLLM's semantics.

``tool_choice`` decides what the answer is:

- ``"none"`` (the default without tools): plain chat; the tools still reach the template.
- a named function (``{"type": "function", "function": {"name": ...}}``): the output is
  constrained to that function's parameters schema (compact JSON) and is the arguments of one
  call.
- ``"required"``: the output is constrained to a non-empty JSON array of
  ``{"name": ..., "parameters": ...}`` objects (one of the tools each); every element is a call.
- ``"auto"`` (the default with tools): the model decides, and the server's tool parser
  (``--tool-call-parser``, which needs ``--enable-auto-tool-choice``) reads its calls.

The answer's ``finish_reason`` is ``"tool_calls"`` when it made calls and stopped by itself.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from llmserve.http.errors import APIError
from llmserve.structured_output.params import StructuredOutputsParams
from llmserve.tool_parsers.base import DeltaMessage, ExtractedToolCalls, ToolParser

#: The schema of a function without ``parameters``: it takes an empty object.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def resolve_tool_parser(pm: Any, name: Optional[str]) -> Optional[type[ToolParser]]:
    """The parser class contributed under ``name`` (``--tool-call-parser``), or None for no
    name; an unknown name is a ``ValueError`` listing the known ones."""
    if name is None:
        return None
    from llmserve.plugins import collect_registry

    parsers = collect_registry(pm, "llmserve_tool_parsers")
    if name not in parsers:
        raise ValueError(f"--tool-call-parser must be one of {sorted(parsers)}, got {name!r}")
    return parsers[name]


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolChoicePlan:
    """How one chat request handles tools: the constraint its ``tool_choice`` forces (if any)
    and how to read its answers (None: they are plain content)."""

    constraint: Optional[StructuredOutputsParams]
    make_parser: Optional[Callable[[], ToolParser]]
    keeps_special_tokens: bool = False
    #: ``parallel_tool_calls: false``: keep the first call only.
    max_calls: Optional[int] = None


def plan_tool_choice(req: Any, tokenizer: Any, auto_parser: Optional[type[ToolParser]],
                     enable_auto_tool_choice: bool) -> ToolChoicePlan:
    """Check ``tools`` / ``tool_choice`` and decide how the request is answered; a bad
    combination is an ``APIError`` (400)."""
    from llmserve.tool_parsers.forced import NamedFunctionParser, ToolCallArrayParser

    tools = req.tools
    choice = req.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    if choice == "none":
        return ToolChoicePlan(None, None)
    if tools is None:
        raise APIError("tool_choice needs tools", 400, "tool_choice")
    max_calls = 1 if req.parallel_tool_calls is False else None
    if choice == "required":
        if not tools:
            return ToolChoicePlan(None, None)  # vLLM: "required" with no tools means "none"
        schema = required_tools_schema([t.function for t in tools], max_calls)
        return ToolChoicePlan(_json_constraint(schema, "tools"),
                              lambda: ToolCallArrayParser(tokenizer), max_calls=max_calls)
    if choice == "auto":
        if not tools:
            return ToolChoicePlan(None, None)
        if not (enable_auto_tool_choice and auto_parser is not None):
            raise APIError('"auto" tool choice requires --enable-auto-tool-choice and '
                           '--tool-call-parser to be set', 400, "tool_choice")
        return ToolChoicePlan(None, lambda: auto_parser(tokenizer),
                              keeps_special_tokens=auto_parser.keeps_special_tokens,
                              max_calls=max_calls)
    name = choice.function.name
    function = next((t.function for t in tools if t.function.name == name), None)
    if function is None:
        raise APIError(f"tool_choice names the function {name!r}, which is not in tools "
                       f"({', '.join(repr(t.function.name) for t in tools) or 'none'})", 400,
                       "tool_choice")
    schema = function.parameters if function.parameters is not None else NO_PARAMETERS
    return ToolChoicePlan(_json_constraint(schema, "tools"),
                          lambda: NamedFunctionParser(tokenizer, name))


def _json_constraint(schema: dict[str, Any], field: str) -> StructuredOutputsParams:
    """Forced calls are compact JSON (``", "`` and ``": "`` between items, no free
    whitespace): what tool-calling models write anyway, and no room for a model to wander
    off into whitespace inside a call."""
    try:
        return StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    except ValueError as exc:
        raise APIError(str(exc), 400, field) from None


def required_tools_schema(functions: list[Any], max_calls: Optional[int] = None
                          ) -> dict[str, Any]:
    """The schema of a ``"required"`` answer: an array of at least one
    ``{"name": <a tool's name>, "parameters": <its schema>}``.

    The tools' ``$defs`` move to the root, where their ``#/$defs/...`` references point once
    the schemas are nested; two tools defining one name differently are a 400.
    """
    defs: dict[str, Any] = {}
    variants = []
    for function in functions:
        parameters = dict(function.parameters) if function.parameters is not None \
            else dict(NO_PARAMETERS)
        for def_name, definition in parameters.pop("$defs", {}).items():
            if def_name in defs and defs[def_name] != definition:
                raise APIError(f"tools define $defs entry {def_name!r} in two different ways",
                               400, "tools")
            defs[def_name] = definition
        variants.append({"type": "object",
                         "properties": {"name": {"const": function.name},
                                        "parameters": parameters},
                         "required": ["name", "parameters"],
                         "additionalProperties": False})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    if max_calls is not None:
        schema["maxItems"] = max_calls
    if defs:
        schema["$defs"] = defs
    return schema


# -- answers -> OpenAI's message and deltas -------------------------------------------------


def message_with_tool_calls(extracted: ExtractedToolCalls, max_calls: Optional[int]
                            ) -> dict[str, Any]:
    """OpenAI's assistant ``message`` for a parsed answer."""
    if not extracted.tools_called:
        return {"role": "assistant", "content": extracted.content}
    calls = extracted.tool_calls[:max_calls] if max_calls is not None else extracted.tool_calls
    return {"role": "assistant", "content": extracted.content,
            "tool_calls": [{"id": new_tool_call_id(), "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}}
                           for c in calls]}


def finish_reason(made_calls: bool, finish: Optional[str]) -> Optional[str]:
    return "tool_calls" if made_calls and finish == "stop" else finish


class ToolCallDeltas:
    """Turns one streamed choice's parser output into OpenAI's ``delta`` dicts: a call's first
    delta has its ``id``, ``type`` and ``function.name``, later ones argument fragments."""

    def __init__(self, parser: ToolParser, max_calls: Optional[int]) -> None:
        self._parser = parser
        self._max_calls = max_calls
        self._text = ""
        self._ids: dict[int, str] = {}

    @property
    def made_calls(self) -> bool:
        return bool(self._ids)

    def delta(self, new_text: str, finished: bool) -> dict[str, Any]:
        """The delta for ``new_text`` (``finished``: the answer ends with it); may be empty."""
        self._text += new_text
        pieces = []
        if new_text:
            pieces.append(self._parser.extract_tool_calls_streaming(self._text, new_text))
        if finished:
            pieces.append(self._parser.finish_streaming(self._text))
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        for piece in pieces:
            if piece is not None:
                self._add(piece, content, calls)
        delta: dict[str, Any] = {}
        if content:
            delta["content"] = "".join(content)
        if calls:
            delta["tool_calls"] = calls
        return delta

    def _add(self, piece: DeltaMessage, content: list[str], calls: list[dict[str, Any]]
             ) -> None:
        if piece.content:
            content.append(piece.content)
        for call in piece.tool_calls:
            if self._max_calls is not None and call.index >= self._max_calls:
                continue
            entry: dict[str, Any] = {"index": call.index}
            if call.index not in self._ids:
                self._ids[call.index] = new_tool_call_id()
                entry.update(id=self._ids[call.index], type="function",
                             function={"name": call.name or "", "arguments": call.arguments})
            else:
                entry["function"] = {"arguments": call.arguments}
            calls.append(entry)


def template_tools(tools: Optional[list[Any]]) -> Optional[list[dict[str, Any]]]:
    """The tools as the chat template sees them (OpenAI's JSON, ``None`` fields left out)."""
    if not tools:
        return None
    return [tool.model_dump(exclude_none=True) for tool in tools]


def template_tool_calls(tool_calls: list[Any]) -> list[dict[str, Any]]:
    """An echoed assistant message's calls for the template, arguments parsed from their JSON
    text as templates expect (``arguments | tojson``, ``arguments.items()``), as vLLM does."""
    out = []
    for call in tool_calls:
        try:
            arguments = json.loads(call.function.arguments) if call.function.arguments else {}
        except ValueError:
            raise APIError(f"tool call {call.id!r}: function.arguments is not JSON", 400,
                           "messages") from None
        out.append({"id": call.id, "type": call.type,
                    "function": {"name": call.function.name, "arguments": arguments}})
    return out
