"""Structured outputs and tool calling through a real server.

Raw HTTP: every way of constraining the output and of choosing tools that is wrong gets a 400
naming the field, streamed or not; tools and echoed tool calls reach the chat template; the
``--tool-call-parser`` flags are checked at start-up.

The official ``openai`` client: ``tool_choice`` named and ``"required"``, streamed and not,
give ``tool_calls`` whose arguments validate against the function's schema; ``"auto"`` reads
the calls with the hermes parser. The embedded model never writes a tool call by itself, so
the auto tests force one with a ``structured_outputs`` regex: the text the parser reads is real
model output, only its shape is fixed. These tests need the engine to enforce grammars.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import jsonschema
import pytest
from http_helpers import API_KEY, SERVER_ARGS, Server

MODEL = "default"
WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Time.",
                                           "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


# -- 400s on the session server (no tool-call parser) ---------------------------------------------


#: (id, path, body, text the message must contain, param)
BAD = [
    ("auto-without-flags", CHAT, {"messages": MESSAGES, "tools": TOOLS, "tool_choice": "auto"},
     '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser', "tool_choice"),
    ("tools-default-to-auto", CHAT, {"messages": MESSAGES, "tools": TOOLS},
     '"auto" tool choice requires', "tool_choice"),
    ("named-not-in-tools", CHAT,
     {"messages": MESSAGES, "tools": TOOLS,
      "tool_choice": {"type": "function", "function": {"name": "get_news"}}},
     "names the function 'get_news', which is not in tools", "tool_choice"),
    ("tool-choice-without-tools", CHAT, {"messages": MESSAGES, "tool_choice": "required"},
     "tool_choice needs tools", "tool_choice"),
    ("tool-without-function", CHAT, {"messages": MESSAGES, "tools": [{"type": "function"}]},
     "tools.0.function: field required", "tools.0.function"),
    ("tool-choice-and-response-format", CHAT,
     {"messages": MESSAGES, "tools": TOOLS, "tool_choice": NAMED,
      "response_format": {"type": "json_object"}},
     "sets response_format and tool_choice", "tool_choice"),
    ("two-constraints", COMPLETIONS,
     {"prompt": "x", "guided_regex": "a+", "guided_choice": ["a"]},
     "sets guided_regex and guided_choice", "guided_choice"),
    ("structured-and-guided", CHAT,
     {"messages": MESSAGES, "structured_outputs": {"regex": "a"}, "guided_json": {}},
     "sets structured_outputs and guided_json", "guided_json"),
    ("guided-json-not-json", COMPLETIONS, {"prompt": "x", "guided_json": "{oops"},
     "guided_json is not valid JSON", "guided_json"),
    ("structured-outputs-two-kinds", CHAT,
     {"messages": MESSAGES, "structured_outputs": {"regex": "a", "choice": ["a"]}},
     "exactly one of", "structured_outputs"),
    ("structured-outputs-unknown", COMPLETIONS,
     {"prompt": "x", "structured_outputs": {"pattern": "a"}}, "unknown fields ['pattern']",
     "structured_outputs"),
    ("json-schema-without-schema", CHAT,
     {"messages": MESSAGES, "response_format": {"type": "json_schema",
                                                "json_schema": {"name": "w"}}},
     "needs json_schema.schema", "response_format.json_schema"),
    ("response-format-type", COMPLETIONS,
     {"prompt": "x", "response_format": {"type": "yaml"}}, "response_format.type",
     "response_format.type"),
    ("empty-choice", COMPLETIONS, {"prompt": "x", "guided_choice": []}, "guided_choice",
     "guided_choice"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("path, body, text, param", [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_constraint_or_tool_choice_is_a_400(http, path, body, text, param, stream):
    r = http.post(path, json={**body, "stream": stream, "max_tokens": 4})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert text in error["message"], error
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", param, 400)


TOOL_TEMPLATE = (
    "{% for t in tools or [] %}[tool {{ t.function.name }} {{ t.function.parameters.required "
    "| join(',') }}]{% endfor %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}(call {{ c.id }} {{ c.function.name }} "
    "city={{ c.function.arguments.city }}){% endfor %}"
    "{% if m.tool_call_id %}(answers {{ m.tool_call_id }}){% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}")
ROUND_TRIP = [
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": None, "refusal": None,
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather",
                                  "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
]
RENDERED = ("[tool get_weather city,unit][tool get_time zone]<user>Weather?"
            "<assistant>(call call_1 get_weather city=Oslo)<tool>-3 C(answers call_1)"
            "<assistant>")


def test_tools_and_tool_calls_reach_the_chat_template(http):
    body = {"messages": ROUND_TRIP, "tools": TOOLS, "chat_template": TOOL_TEMPLATE}
    tokens = http.post("/tokenize", json=body).json()["tokens"]
    assert http.post("/detokenize", json={"tokens": tokens}).json()["prompt"] == RENDERED
    r = http.post(CHAT, json={**body, "tool_choice": "none", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(tokens)
    assert "tool_calls" not in r.json()["choices"][0]["message"]


def test_echoed_tool_call_arguments_must_be_json(http):
    messages = json.loads(json.dumps(ROUND_TRIP))
    messages[1]["tool_calls"][0]["function"]["arguments"] = "{city: Oslo"
    r = http.post(CHAT, json={"messages": messages, "max_tokens": 2})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "tool call 'call_1': function.arguments is not JSON"


@pytest.mark.parametrize("flags, message", [
    (["--tool-call-parser", "nope"],
     "llmserve serve: --tool-call-parser must be one of ['hermes', 'llama3_json'], got 'nope'"),
    (["--enable-auto-tool-choice"],
     "llmserve serve: --enable-auto-tool-choice needs --tool-call-parser NAME"),
])
def test_bad_tool_flags_exit_2_with_one_line(flags, message):
    proc = subprocess.run([sys.executable, "-m", "llmserve.cli.main", "serve", "--port", "0",
                           *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == message


# -- the openai client against a server with --tool-call-parser hermes ---------------------------


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    server = Server([*SERVER_ARGS, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
                    tmp_path_factory.mktemp("tool-server") / "server.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tool_client(tool_server):
    import openai

    with openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key=API_KEY, max_retries=0,
                       timeout=120) as client:
        yield client


def assert_valid_call(call, name=None) -> dict:
    """An OpenAI tool call of one of TOOLS; returns its arguments."""
    assert call.type == "function" and re.fullmatch(r"call_[0-9a-f]{24}", call.id), call
    assert call.function.name in SCHEMAS and name in (None, call.function.name)
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def collect_stream(chunks) -> tuple[str, list[dict], list]:
    """Joined content, the calls rebuilt from their deltas, and the finish reasons."""
    content, calls, finishes = "", [], []
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for piece in delta.tool_calls or []:
                if piece.index == len(calls):  # a call's first delta: id, type and name
                    assert piece.id and piece.type == "function" and piece.function.name
                    calls.append({"id": piece.id, "name": piece.function.name,
                                  "arguments": piece.function.arguments or ""})
                else:
                    assert piece.index < len(calls) and piece.id is None
                    assert not piece.function.name
                    calls[piece.index]["arguments"] += piece.function.arguments or ""
            finishes.append(choice.finish_reason)
    return content, calls, finishes


def test_named_function_call(tool_client):
    out = tool_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                              tool_choice=NAMED, max_tokens=60, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert_valid_call(call, "get_weather")


def test_named_function_call_streamed(tool_client):
    chunks = list(tool_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=60,
        temperature=0.8, seed=3, stream=True))
    content, calls, finishes = collect_stream(chunks)
    assert content == "" and finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    [call] = calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"]) and call["name"] == "get_weather"
    jsonschema.validate(json.loads(call["arguments"]), WEATHER)


def test_required_tool_calls(tool_client):
    # Sampled, not greedy: the embedded model's greedy path appends calls until max_tokens.
    out = tool_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                              tool_choice="required", max_tokens=200,
                                              temperature=1.0, seed=2)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert_valid_call(call)
    ids = [call.id for call in choice.message.tool_calls]
    assert len(set(ids)) == len(ids)


def test_required_tool_calls_streamed_with_n_2(tool_client):
    chunks = list(tool_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=120,
        temperature=1.0, seed=11, n=2, stream=True))
    for index in (0, 1):
        mine = [c for c in chunks if c.choices and c.choices[0].index == index]
        content, calls, finishes = collect_stream(mine)
        assert content == "" and finishes[-1] == "tool_calls" and calls
        for call in calls:
            assert call["name"] in SCHEMAS
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_parallel_tool_calls_false_makes_one_call(tool_client):
    out = tool_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_tokens=120, temperature=1.0, seed=5)
    assert len(out.choices[0].message.tool_calls) == 1


#: A hermes call, as Qwen2.5 writes one; the model picks the city.
HERMES_CALL = (r'<tool_call>\n\{"name": "get_weather", "arguments": '
               r'\{"city": "(Paris|Oslo|Lima)", "unit": "celsius"\}\}\n</tool_call>')


def test_auto_tool_choice_reads_a_hermes_call(tool_client):
    regex = "The weather, please\\.\n" + HERMES_CALL
    out = tool_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=200,
        temperature=0, extra_body={"structured_outputs": {"regex": regex}})
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content == "The weather, please."
    [call] = choice.message.tool_calls
    assert assert_valid_call(call, "get_weather")["unit"] == "celsius"


def test_auto_tool_choice_streamed(tool_client):
    chunks = list(tool_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200, temperature=0.8, seed=1,
        stream=True, extra_body={"structured_outputs": {"regex": HERMES_CALL}}))
    content, calls, finishes = collect_stream(chunks)
    assert content == "" and finishes[-1] == "tool_calls"
    [call] = calls
    assert call["name"] == "get_weather"
    jsonschema.validate(json.loads(call["arguments"]), WEATHER)


def test_auto_tool_choice_without_a_call_is_plain_content(tool_client):
    out = tool_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=20, temperature=0,
        extra_body={"guided_choice": ["It is sunny.", "It rains."]})
    choice = out.choices[0]
    assert choice.message.content in ("It is sunny.", "It rains.")
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"


def test_tool_call_round_trip_is_accepted(tool_client):
    first = tool_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                                tool_choice=NAMED, max_tokens=60)
    call = first.choices[0].message.tool_calls[0]
    messages = [*MESSAGES, first.choices[0].message.model_dump(),
                {"role": "tool", "tool_call_id": call.id, "content": "12 C"}]
    second = tool_client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                                 tool_choice="none", max_tokens=4)
    assert second.choices[0].message.content and second.choices[0].message.tool_calls is None


# -- structured outputs through every field --------------------------------------------------


@pytest.mark.parametrize("extra, check", [
    ({"guided_choice": ["alpha", "beta gamma"]}, lambda t: t in ("alpha", "beta gamma")),
    ({"guided_regex": r"[0-9]{3}-[a-z]{2}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2}", t)),
    ({"structured_outputs": {"regex": "(yes|no)!"}}, lambda t: t in ("yes!", "no!")),
    ({"guided_json": WEATHER}, lambda t: jsonschema.validate(json.loads(t), WEATHER) is None),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "weather", "schema": WEATHER}}},
     lambda t: jsonschema.validate(json.loads(t), WEATHER) is None),
], ids=["guided_choice", "guided_regex", "structured_outputs", "guided_json", "json_schema"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_completion_follows_its_constraint(tool_client, extra, check, stream):
    kwargs = dict(model=MODEL, prompt="The answer is", max_tokens=60, temperature=1.0, seed=2,
                  extra_body=extra)
    if stream:
        chunks = list(tool_client.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = tool_client.completions.create(**kwargs).choices[0]
        text, finish = choice.text, choice.finish_reason
    assert finish == "stop" and check(text), text


def test_chat_json_object(tool_client):
    out = tool_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=80,
                                              temperature=0,
                                              response_format={"type": "json_object"})
    text = out.choices[0].message.content
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict), text
    else:  # an unbounded object may run out of tokens: what was written is an object's start
        assert text.lstrip().startswith("{"), text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_grammar_the_engine_cannot_compile_is_a_400(tool_server, stream):
    r = httpx.post(f"{tool_server.url}{COMPLETIONS}", timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"prompt": "x", "max_tokens": 4, "guided_regex": "(((",
                         "stream": stream})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == ("guided_regex", 400,
                                                              "BadRequestError")
