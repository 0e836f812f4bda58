"""Tool-call parsers: whole answers, streams cut at every position, malformed text.

The streaming check is the one a client relies on: whatever the pieces the text arrives in,
the content and the argument fragments of each call, joined, are exactly what the whole answer
gives, a call's name comes in its first piece only, and no piece names a call twice.
"""

from __future__ import annotations

import json
import random

import pytest
from llmserve.plugins import collect_registry, get_plugin_manager
from llmserve.tool_parsers.base import DeltaMessage, ExtractedToolCalls, ToolCall
from llmserve.tool_parsers.forced import NamedFunctionParser, ToolCallArrayParser
from llmserve.tool_parsers.hermes import HermesToolParser
from llmserve.tool_parsers.json_scan import CallObjectScanner
from llmserve.tool_parsers.llama3_json import Llama3JsonToolParser

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, {"x": "}]"}]}}'
CLOCK = '{"arguments": {}, "name": "get_time"}'


def stream(make_parser, text: str, cuts: list[int]) -> tuple[str, dict[int, list]]:
    """Feed ``text`` in pieces ending at ``cuts``; returns the joined content and, per call
    index, [name, joined arguments]. Checks the shape of every piece on the way."""
    parser = make_parser()
    pieces: list[DeltaMessage] = []
    start = 0
    for end in [*cuts, len(text)]:
        if end <= start:
            continue
        piece = parser.extract_tool_calls_streaming(text[:end], text[start:end])
        if piece is not None:
            pieces.append(piece)
        start = end
    last = parser.finish_streaming(text)
    if last is not None:
        pieces.append(last)
    content = "".join(p.content or "" for p in pieces)
    calls: dict[int, list] = {}
    for piece in pieces:
        indexes = [c.index for c in piece.tool_calls]
        assert len(indexes) == len(set(indexes)), piece
        for call in piece.tool_calls:
            if call.index not in calls:
                assert call.name, f"the first piece of call {call.index} has no name: {piece}"
                calls[call.index] = [call.name, ""]
            else:
                assert call.name is None, f"call {call.index} named twice: {piece}"
            calls[call.index][1] += call.arguments
    assert sorted(calls) == list(range(len(calls)))
    return content, calls


def chunkings(text: str, seed: int) -> list[list[int]]:
    """One character at a time, every split in two, and random piece sizes."""
    rng = random.Random(seed)
    out = [list(range(1, len(text))), []]
    out += [[cut] for cut in range(1, len(text))]
    for _ in range(20):
        cuts, pos = [], 0
        while pos < len(text):
            pos += rng.randint(1, 7)
            cuts.append(pos)
        out.append(cuts)
    return out


def assert_stream_matches_whole(make_parser, text: str) -> ExtractedToolCalls:
    whole = make_parser().extract_tool_calls(text)
    expected_calls = {i: [c.name, c.arguments] for i, c in enumerate(whole.tool_calls)}
    for cuts in chunkings(text, seed=len(text)):
        content, calls = stream(make_parser, text, cuts)
        assert calls == expected_calls, cuts
        assert content == (whole.content or ""), cuts
    return whole


# -- hermes -------------------------------------------------------------------------------------


HERMES_ANSWERS = {
    "content-then-calls": (
        f"Let me check.\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>{CLOCK}</tool_call>\n",
        ExtractedToolCalls(True, [
            ToolCall("get_weather", '{"city": "Paris", "days": [1, {"x": "}]"}]}'),
            ToolCall("get_time", "{}")], "Let me check.")),
    "content-on-both-sides": (
        f"First.\n<tool_call>{CLOCK}</tool_call>\nThen more.  ",
        ExtractedToolCalls(True, [ToolCall("get_time", "{}")], "First.\nThen more.")),
    "calls-only": (
        f"<tool_call>\n{CLOCK}\n</tool_call>\n\n<tool_call>\n{CLOCK}\n</tool_call>",
        ExtractedToolCalls(True, [ToolCall("get_time", "{}"), ToolCall("get_time", "{}")],
                           None)),
    "no-closing-tag": (
        f"<tool_call>\n{WEATHER}\n",
        ExtractedToolCalls(True, [ToolCall("get_weather",
                                           '{"city": "Paris", "days": [1, {"x": "}]"}]}')],
                           None)),
    "escapes": (
        '<tool_call>{"name": "g\\u00e9t", "arguments": {"s": "a \\"}\\" <tool_call> b"}}'
        '</tool_call>',
        ExtractedToolCalls(True, [ToolCall("gét", '{"s": "a \\"}\\" <tool_call> b"}')], None)),
    "no-calls": ("Just an answer, with a < sign and <tool_c in it.",
                 ExtractedToolCalls(False, [], "Just an answer, with a < sign and <tool_c in it.")),
}

#: Malformed calls whose name is never sent (so a stream of them is all content)...
HERMES_UNSENDABLE = [
    "Before <tool_call>not json</tool_call> after",
    '<tool_call>{"name": 5, "arguments": {}}</tool_call>',
    '<tool_call>{"arguments": {"a": 1}}</tool_call>',
    '<tool_call>{"name" "f"}</tool_call>',
]
#: ... and calls that break after their name.
HERMES_BROKEN = [
    '<tool_call>{"name": "f", "arguments": "a string"}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"a": 1},}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"a": tru}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"a": 1}',  # cut off
    f"<tool_call>{CLOCK}</tool_call> and <tool_call>oops",
]


@pytest.mark.parametrize("text, expected", HERMES_ANSWERS.values(), ids=HERMES_ANSWERS.keys())
def test_hermes_whole_answer_and_every_streaming(text, expected):
    assert HermesToolParser(None).extract_tool_calls(text) == expected
    assert_stream_matches_whole(lambda: HermesToolParser(None), text)


@pytest.mark.parametrize("text", HERMES_UNSENDABLE + HERMES_BROKEN)
def test_hermes_malformed_calls_are_content(text):
    assert HermesToolParser(None).extract_tool_calls(text) == ExtractedToolCalls(False, [], text)


@pytest.mark.parametrize("text", HERMES_UNSENDABLE)
def test_hermes_stream_of_an_unsendable_call_is_its_text(text):
    for cuts in chunkings(text, seed=1):
        assert stream(lambda: HermesToolParser(None), text, cuts) == (text, {})


def test_hermes_stream_keeps_a_call_that_broke_after_its_name():
    """A stream cannot take back a name it sent: the broken object stays that call, and the
    answer goes on after it. Had the object arrived in one piece, nothing would have been
    sent, and it is content."""
    text = '<tool_call>{"name": "f", "arguments": {"a": tru}}</tool_call>\nAfter.'
    one_by_one = list(range(1, len(text)))
    assert stream(lambda: HermesToolParser(None), text, one_by_one) == (
        "After.", {0: ["f", '{"a": tru}']})
    assert stream(lambda: HermesToolParser(None), text, []) == (text, {})


def test_hermes_sends_the_name_before_the_arguments_finish():
    parser = HermesToolParser(None)
    text = "Sure.\n<tool_"
    assert parser.extract_tool_calls_streaming(text, text) == DeltaMessage("Sure.")
    text += 'call>{"name": "get_wea'
    assert parser.extract_tool_calls_streaming(text, 'call>{"name": "get_wea') is None
    text += 'ther", "arguments": {"ci'
    piece = parser.extract_tool_calls_streaming(text, 'ther", "arguments": {"ci')
    assert piece.content is None
    [call] = piece.tool_calls
    assert (call.index, call.name, call.arguments) == (0, "get_weather", '{"ci')
    text += 'ty": "Oslo"}}</tool_call>'
    [call] = parser.extract_tool_calls_streaming(text, 'ty": "Oslo"}}</tool_call>').tool_calls
    assert (call.index, call.name, call.arguments) == (0, None, 'ty": "Oslo"}')
    assert parser.finish_streaming(text) is None


def test_hermes_releases_a_held_back_half_tag_at_the_end():
    parser = HermesToolParser(None)
    assert parser.extract_tool_calls_streaming("Hi <tool_", "Hi <tool_") == DeltaMessage("Hi")
    assert parser.finish_streaming("Hi <tool_") == DeltaMessage(" <tool_")


def test_hermes_keeps_special_tokens():
    assert HermesToolParser.keeps_special_tokens is True
    assert Llama3JsonToolParser.keeps_special_tokens is False


# -- llama3_json --------------------------------------------------------------------------------


LLAMA_ANSWERS = {
    "python-tag-and-two-calls": (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "get_time", "arguments": {"tz": "UTC"}}',
        ExtractedToolCalls(True, [ToolCall("get_weather", '{"city": "Paris"}'),
                                  ToolCall("get_time", '{"tz": "UTC"}')], None)),
    "bare-object": (
        '  {"name": "get_time", "parameters": {}}\n',
        ExtractedToolCalls(True, [ToolCall("get_time", "{}")], None)),
    "no-parameters": ('{"name": "ping"}', ExtractedToolCalls(True, [ToolCall("ping", "{}")],
                                                             None)),
    "plain-text": ("The weather is fine.", ExtractedToolCalls(False, [], "The weather is fine.")),
    "plain-json": ('{"answer": 42}', ExtractedToolCalls(False, [], '{"answer": 42}')),
    "tag-then-code": ("<|python_tag|>print(1)",
                      ExtractedToolCalls(False, [], "<|python_tag|>print(1)")),
}

LLAMA_MALFORMED = [
    '{"name": "f", "parameters": {"a": 1}} and some words',
    '{"name": "f", "parameters": {"a": 1}}; not a call',
    '{"name": "f", "parameters": {"a": 1}',
    '{"name": "f", "parameters": [1, 2]}',
]


@pytest.mark.parametrize("text, expected", LLAMA_ANSWERS.values(), ids=LLAMA_ANSWERS.keys())
def test_llama3_json_whole_answer_and_every_streaming(text, expected):
    assert Llama3JsonToolParser(None).extract_tool_calls(text) == expected
    assert_stream_matches_whole(lambda: Llama3JsonToolParser(None), text)


@pytest.mark.parametrize("text", LLAMA_MALFORMED)
def test_llama3_json_malformed_calls_are_content(text):
    expected = ExtractedToolCalls(False, [], text)
    assert Llama3JsonToolParser(None).extract_tool_calls(text) == expected


def test_llama3_json_streams_plain_text_at_once():
    parser = Llama3JsonToolParser(None)
    assert parser.extract_tool_calls_streaming("  ", "  ") is None  # could still be a call
    assert parser.extract_tool_calls_streaming("  Th", "Th") == DeltaMessage("  Th")
    assert parser.extract_tool_calls_streaming("  The", "e") == DeltaMessage("e")
    assert parser.finish_streaming("  The") is None


# -- the shapes tool_choice forces ----------------------------------------------------------------


def test_required_array_is_one_call_per_element():
    text = ('[{"name": "get_weather", "parameters": {"city": "Oslo"}}, '
            '{"name": "get_time", "parameters": {}}]')
    whole = assert_stream_matches_whole(lambda: ToolCallArrayParser(None), text)
    assert whole == ExtractedToolCalls(True, [ToolCall("get_weather", '{"city": "Oslo"}'),
                                              ToolCall("get_time", "{}")], None)


@pytest.mark.parametrize("text", ['[{"name": "get_weather", "parameters": {"ci', "[]x", "{}"])
def test_required_array_cut_short_is_content(text):
    assert ToolCallArrayParser(None).extract_tool_calls(text) == ExtractedToolCalls(False, [],
                                                                                    text)


def test_named_function_answer_is_its_arguments():
    text = '{"city": "Paris", "days": 3}'
    whole = assert_stream_matches_whole(lambda: NamedFunctionParser(None, "get_weather"), text)
    assert whole == ExtractedToolCalls(True, [ToolCall("get_weather", text)], None)


# -- the scanner ------------------------------------------------------------------------------


def test_scanner_reports_the_name_as_soon_as_it_closes_and_consumes_only_the_object():
    scanner = CallObjectScanner()
    assert scanner.feed('  {"name": "f') == len('  {"name": "f')
    assert scanner.name is None and not scanner.done
    text = 'n", "arguments": {"a": [1, 2.5e3, null, true]}}</tool_call>'
    consumed = scanner.feed(text)
    assert text[consumed:] == "</tool_call>"
    assert scanner.done and scanner.name == "fn"
    assert json.loads(scanner.arguments) == {"a": [1, 2500.0, None, True]}


@pytest.mark.parametrize("text", ['x{"name": "f"}', '{"name" "f"}', '{"name": "f", "name": "g"}',
                                  '{"name": "f", "arguments": {}, "arguments": {}}'])
def test_scanner_fails_on_what_is_not_one_call_object(text):
    scanner = CallObjectScanner()
    scanner.feed(text)
    assert scanner.failed


# -- the registry -----------------------------------------------------------------------------


def test_the_core_contributes_hermes_and_llama3_json():
    parsers = collect_registry(get_plugin_manager(load_entry_points=False),
                               "llmserve_tool_parsers")
    assert parsers == {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser}
