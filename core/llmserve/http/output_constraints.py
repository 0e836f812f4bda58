"""The request fields that constrain the output, as one ``StructuredOutputsParams``.

A request may constrain its output through OpenAI's ``response_format`` (``json_object``,
``json_schema``), vLLM's ``structured_outputs`` object, vLLM's older ``guided_json`` /
``guided_regex`` / ``guided_choice`` / ``guided_grammar`` fields, or (chat) a ``tool_choice``
that forces a tool call. A request sets at most one of them; each problem is a 400 naming the
field it came from, which is also the field named when the engine cannot compile the grammar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from llmserve.http.errors import APIError
from llmserve.structured_output.params import StructuredOutputsParams, schema_source


@dataclass(frozen=True)
class OutputConstraint:
    """The request's constraint and the request field it came from."""

    params: StructuredOutputsParams
    field: str


def _response_format(req: Any) -> Optional[Callable[[], StructuredOutputsParams]]:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return lambda: StructuredOutputsParams(json_object=True)
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError('response_format of type "json_schema" needs json_schema.schema', 400,
                       "response_format.json_schema")
    schema = fmt.json_schema.schema_
    return lambda: StructuredOutputsParams(
        json=schema_source(schema, "response_format.json_schema.schema"))


def _builders(req: Any) -> list[tuple[str, Callable[[], StructuredOutputsParams]]]:
    """(field, build) for every constraining field the request sets, in field order."""
    found = []
    response_format = _response_format(req)
    if response_format is not None:
        found.append(("response_format", response_format))
    if req.structured_outputs is not None:
        found.append(("structured_outputs",
                      lambda: StructuredOutputsParams.from_dict(req.structured_outputs)))
    if req.guided_json is not None:
        found.append(("guided_json", lambda: StructuredOutputsParams(
            json=schema_source(req.guided_json, "guided_json"))))
    if req.guided_regex is not None:
        found.append(("guided_regex", lambda: StructuredOutputsParams(regex=req.guided_regex)))
    if req.guided_choice is not None:
        found.append(("guided_choice",
                      lambda: StructuredOutputsParams(choice=list(req.guided_choice))))
    if req.guided_grammar is not None:
        found.append(("guided_grammar",
                      lambda: StructuredOutputsParams(grammar=req.guided_grammar)))
    return found


def output_constraint(req: Any, tool_choice: Optional[StructuredOutputsParams] = None
                      ) -> Optional[OutputConstraint]:
    """The one constraint ``req`` sets, or None.

    :param tool_choice: the constraint a chat request's ``tool_choice`` forces, if any.

    Raises ``APIError`` (400) when two fields constrain the output, or one is invalid.
    """
    builders = _builders(req)
    if tool_choice is not None:
        builders.append(("tool_choice", lambda: tool_choice))
    if not builders:
        return None
    if len(builders) > 1:
        names = [name for name, _ in builders]
        raise APIError(f"only one way of constraining the output may be used per request; "
                       f"this one sets {', '.join(names[:-1])} and {names[-1]}", 400, names[1])
    field, build = builders[0]
    try:
        return OutputConstraint(build(), field)
    except ValueError as exc:
        raise APIError(str(exc), 400, field) from None
