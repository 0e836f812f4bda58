"""Request bodies -> the one ``StructuredOutputsParams`` they ask for, and tool_choice plans:
every alias, every conflict, every invalid value, without a server (the server-level 400s
are in test_tool_calling.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest
from llmserve.http.errors import APIError
from llmserve.http.output_constraints import output_constraint
from llmserve.http.protocol import ChatCompletionRequest, CompletionRequest
from llmserve.http.tool_calls import plan_tool_choice, required_tools_schema
from llmserve.structured_output.params import GrammarSpec, StructuredOutputsParams
from llmserve.tool_parsers.forced import NamedFunctionParser, ToolCallArrayParser
from llmserve.tool_parsers.hermes import HermesToolParser

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CANONICAL = json.dumps(SCHEMA, sort_keys=True, separators=(",", ":"))
MESSAGES = [{"role": "user", "content": "hi"}]

#: field and value -> the spec it must become.
ALIASES = {
    "response_format-json_object": ({"response_format": {"type": "json_object"}},
                                    GrammarSpec("json_object", "{}")),
    "response_format-json_schema": (
        {"response_format": {"type": "json_schema",
                             "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}}},
        GrammarSpec("json", CANONICAL)),
    "structured_outputs-json": ({"structured_outputs": {"json": SCHEMA}},
                                GrammarSpec("json", CANONICAL)),
    "structured_outputs-compact": (
        {"structured_outputs": {"json_object": True, "disable_any_whitespace": True}},
        GrammarSpec("json_object", "{}", any_whitespace=False)),
    "structured_outputs-regex": ({"structured_outputs": {"regex": "[ab]+"}},
                                 GrammarSpec("regex", "[ab]+")),
    "guided_json-dict": ({"guided_json": SCHEMA}, GrammarSpec("json", CANONICAL)),
    "guided_json-text": ({"guided_json": json.dumps(SCHEMA)}, GrammarSpec("json", CANONICAL)),
    "guided_regex": ({"guided_regex": r"\d{3}"}, GrammarSpec("regex", r"\d{3}")),
    "guided_choice": ({"guided_choice": ["yes", "no"]},
                      GrammarSpec("choice", '["yes", "no"]')),
    "guided_grammar": ({"guided_grammar": 'root ::= "a"'},
                       GrammarSpec("grammar", 'root ::= "a"')),
}


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": MESSAGES, **fields})


def completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "x", **fields})


@pytest.mark.parametrize("make", [chat, completion], ids=["chat", "completion"])
@pytest.mark.parametrize("body, spec", ALIASES.values(), ids=ALIASES.keys())
def test_every_field_becomes_its_constraint(make, body, spec):
    constraint = output_constraint(make(**body))
    assert constraint.params.spec == spec
    assert constraint.field == next(iter(body))


@pytest.mark.parametrize("make", [chat, completion], ids=["chat", "completion"])
def test_no_constraint(make):
    assert output_constraint(make()) is None
    assert output_constraint(make(response_format={"type": "text"})) is None


@pytest.mark.parametrize("first, second", [
    ("response_format-json_object", "guided_regex"),
    ("structured_outputs-json", "guided_json-dict"),
    ("guided_choice", "guided_grammar"),
])
def test_two_constraints_are_a_400_naming_both(first, second):
    body = {**ALIASES[first][0], **ALIASES[second][0]}
    with pytest.raises(APIError) as info:
        output_constraint(chat(**body))
    names = [next(iter(ALIASES[first][0])), next(iter(ALIASES[second][0]))]
    assert info.value.status == 400
    assert f"sets {names[0]} and {names[1]}" in info.value.message
    assert info.value.param == names[1]


def test_tool_choice_constraint_conflicts_with_response_format():
    forced = StructuredOutputsParams(json=SCHEMA)
    with pytest.raises(APIError) as info:
        output_constraint(chat(response_format={"type": "json_object"}), forced)
    assert "sets response_format and tool_choice" in info.value.message
    assert output_constraint(chat(), forced).field == "tool_choice"


@pytest.mark.parametrize("body, param, message", [
    ({"guided_json": "{not json"}, "guided_json", "guided_json is not valid JSON"),
    ({"guided_json": "[1, 2]"}, "guided_json", "guided_json must be a JSON schema object"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs",
     "exactly one of"),
    ({"structured_outputs": {}}, "structured_outputs", "exactly one of"),
    ({"structured_outputs": {"json_schema": {}}}, "structured_outputs",
     "unknown fields ['json_schema']"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "non-empty list"),
    ({"structured_outputs": {"json": "{bad"}}, "structured_outputs",
     "structured_outputs.json is not valid JSON"),
    ({"guided_grammar": "   "}, "guided_grammar", "non-empty grammar"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema",
     "needs json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema", "needs json_schema.schema"),
])
def test_invalid_constraints_are_a_400_naming_the_field(body, param, message):
    with pytest.raises(APIError) as info:
        output_constraint(chat(**body))
    assert (info.value.status, info.value.param) == (400, param)
    assert message in info.value.message


# -- tool_choice --------------------------------------------------------------------------------


def tool(name: str, parameters=None) -> dict:
    function = {"name": name, "description": f"{name} tool"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


TOOLS = [tool("get_weather", SCHEMA), tool("get_time")]


def plan(enable_auto: bool = False, parser=None, **fields):
    return plan_tool_choice(chat(**fields), None, parser, enable_auto)


def test_no_tools_or_none_is_plain_chat():
    for fields in ({}, {"tool_choice": "none"}, {"tools": TOOLS, "tool_choice": "none"},
                   {"tools": [], "tool_choice": "required"}):
        p = plan(**fields)
        assert p.constraint is None and p.make_parser is None, fields


def test_named_function_is_constrained_to_its_parameters():
    p = plan(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert p.constraint.spec == GrammarSpec("json", CANONICAL, any_whitespace=False)
    parser = p.make_parser()
    assert isinstance(parser, NamedFunctionParser) and parser.name == "get_weather"
    no_parameters = plan(tools=TOOLS,
                         tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert json.loads(no_parameters.constraint.spec.source) == {"type": "object",
                                                                "properties": {}}


def test_required_is_constrained_to_an_array_of_calls():
    p = plan(tools=TOOLS, tool_choice="required")
    assert json.loads(p.constraint.spec.source) == required_tools_schema(
        [chat(tools=TOOLS).tools[0].function, chat(tools=TOOLS).tools[1].function])
    assert isinstance(p.make_parser(), ToolCallArrayParser) and p.max_calls is None
    single = plan(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert json.loads(single.constraint.spec.source)["maxItems"] == 1
    assert single.max_calls == 1


def test_auto_needs_the_server_flags():
    for fields in ({"tools": TOOLS}, {"tools": TOOLS, "tool_choice": "auto"}):
        for enable, parser in ((False, None), (True, None), (False, HermesToolParser)):
            with pytest.raises(APIError) as info:
                plan(enable, parser, **fields)
            assert info.value.param == "tool_choice"
            assert "--enable-auto-tool-choice and --tool-call-parser" in info.value.message
        p = plan(True, HermesToolParser, **fields)
        assert p.constraint is None and isinstance(p.make_parser(), HermesToolParser)
        assert p.keeps_special_tokens


@pytest.mark.parametrize("fields, message", [
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "names the function 'nope', which is not in tools ('get_weather', 'get_time')"),
])
def test_bad_tool_choice_is_a_400(fields, message):
    with pytest.raises(APIError) as info:
        plan(True, HermesToolParser, **fields)
    assert info.value.status == 400 and info.value.param == "tool_choice"
    assert message in info.value.message


def test_required_schema_accepts_exactly_calls_of_the_tools():
    address = {"type": "object", "properties": {"street": {"type": "string"}},
               "required": ["street"], "additionalProperties": False}
    ship = {"type": "object", "properties": {"to": {"$ref": "#/$defs/Address"}},
            "required": ["to"], "$defs": {"Address": address}}
    functions = chat(tools=[tool("ship", ship), *TOOLS]).tools
    schema = required_tools_schema([t.function for t in functions])
    assert schema["$defs"] == {"Address": address}  # hoisted to where "#/$defs" points
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate([{"name": "ship", "parameters": {"to": {"street": "Main St"}}},
                        {"name": "get_time", "parameters": {}}])
    for bad in ([], [{"name": "nope", "parameters": {}}],
                [{"name": "ship", "parameters": {"to": {"street": 5}}}],
                [{"name": "get_weather", "parameters": {"city": "Oslo"}, "extra": 1}],
                [{"name": "get_weather"}]):
        assert not validator.is_valid(bad), bad


def test_required_schema_rejects_clashing_defs():
    one = {"type": "object", "$defs": {"A": {"type": "string"}}}
    two = {"type": "object", "$defs": {"A": {"type": "integer"}}}
    functions = chat(tools=[tool("one", one), tool("two", two)]).tools
    with pytest.raises(APIError) as info:
        required_tools_schema([t.function for t in functions])
    assert "'A'" in info.value.message and info.value.param == "tools"
