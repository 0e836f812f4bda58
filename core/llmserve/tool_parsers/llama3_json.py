"""``llama3_json``: Llama 3.1 / 3.2's JSON tool calls.

::

    <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": ...}

The answer is one or more JSON objects with ``name`` and ``parameters`` (``arguments`` is
accepted too), separated by ``;``, optionally after ``<|python_tag|>`` (a special token, so
usually already removed by detokenization). An answer that does not start with an object is
plain content; one that starts with an object but is not entirely calls is content too.
"""

from __future__ import annotations

from enum import Enum

from llmserve.tool_parsers.base import DeltaBuilder
from llmserve.tool_parsers.incremental import IncrementalToolParser, Reader
from llmserve.tool_parsers.json_scan import CallStream, skip_whitespace

PYTHON_TAG = "<|python_tag|>"
ARGUMENT_KEYS = ("parameters", "arguments")


class _Mode(Enum):
    START = "start"            # nothing but whitespace (and the python tag) yet
    EXPECT_CALL = "expect_call"  # after the tag or a ";": an object must follow
    CALL = "call"
    BETWEEN = "between"        # after an object: ";" or the end
    CONTENT = "content"        # the answer is not calls, or stopped being calls


class Llama3JsonReader(Reader):
    def __init__(self) -> None:
        self._mode = _Mode.START
        self._pos = 0
        self._calls: list[CallStream] = []
        self.failed = False

    def advance(self, text: str, out: DeltaBuilder) -> None:
        while True:
            if self._mode is _Mode.START:
                start = skip_whitespace(text, self._pos)
                rest = text[start:]
                if rest.startswith(PYTHON_TAG):
                    self._pos = start + len(PYTHON_TAG)
                    self._mode = _Mode.EXPECT_CALL
                elif rest.startswith("{"):
                    self._mode = _Mode.EXPECT_CALL
                elif not rest or PYTHON_TAG.startswith(rest):
                    return
                else:
                    self._not_calls()
            elif self._mode is _Mode.EXPECT_CALL:
                start = skip_whitespace(text, self._pos)
                if start == len(text):
                    return
                if text[start] != "{":
                    self._not_calls()
                    continue
                self._pos = start
                self._calls.append(CallStream(len(self._calls), ARGUMENT_KEYS))
                self._mode = _Mode.CALL
            elif self._mode is _Mode.CALL:
                call = self._calls[-1]
                self._pos += call.feed(text[self._pos:], out)
                if call.scanner.failed:
                    self._not_calls()
                elif call.scanner.done:
                    self._mode = _Mode.BETWEEN
                else:
                    return
            elif self._mode is _Mode.BETWEEN:
                start = skip_whitespace(text, self._pos)
                if start == len(text):
                    return
                if text[start] == ";":
                    self._pos = start + 1
                    self._mode = _Mode.EXPECT_CALL
                else:
                    self._not_calls()
            else:
                out.content(text[self._pos:])
                self._pos = len(text)
                return

    def finish(self, text: str, out: DeltaBuilder) -> None:
        if self._mode in (_Mode.START, _Mode.CALL) or (
                self._mode is _Mode.EXPECT_CALL and not self._calls):
            self._not_calls()
            self.advance(text, out)

    def _not_calls(self) -> None:
        """From here on the answer is content: all of it when no call was sent yet."""
        self._mode = _Mode.CONTENT
        if not any(call.started for call in self._calls):
            self._pos = 0
            if self._calls:
                self.failed = True
            self._calls.clear()
        else:
            self.failed = True


class Llama3JsonToolParser(IncrementalToolParser):
    """``{"name": ..., "parameters": {...}}``, several separated by ``;``."""

    def new_reader(self) -> Reader:
        return Llama3JsonReader()
