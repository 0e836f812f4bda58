"""Readers for answers whose shape the server forced with a grammar (not contributed by name).

- ``tool_choice: {"type": "function", "function": {"name": ...}}``: the answer is constrained
  to that function's parameters schema, so all of it is the arguments of one call
  (``NamedFunctionParser``).
- ``tool_choice: "required"``: the answer is constrained to a non-empty JSON array of
  ``{"name": ..., "parameters": {...}}`` objects, one per call (``ToolCallArrayParser``).

An answer cut short (``max_tokens``) is not a complete array: it is then content, with no calls.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from llmserve.tool_parsers.base import DeltaBuilder
from llmserve.tool_parsers.incremental import IncrementalToolParser, Reader
from llmserve.tool_parsers.json_scan import CallStream, skip_whitespace


class _NamedFunctionReader(Reader):
    def __init__(self, name: str) -> None:
        self._name = name
        self._sent = -1  # characters of the answer sent as arguments; -1: not even the name

    def advance(self, text: str, out: DeltaBuilder) -> None:
        if self._sent < 0:
            out.call(0, name=self._name)
            self._sent = 0
        out.call(0, arguments=text[self._sent:])
        self._sent = len(text)

    def finish(self, text: str, out: DeltaBuilder) -> None:
        self.advance(text, out)


class NamedFunctionParser(IncrementalToolParser):
    """The whole answer is the arguments of a call of ``name``."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        super().__init__(tokenizer)
        self.name = name

    def new_reader(self) -> Reader:
        return _NamedFunctionReader(self.name)


class _Mode(Enum):
    START = "start"    # before "["
    ITEM = "item"      # after "[" or ",": an object must follow
    CALL = "call"
    AFTER_ITEM = "after_item"  # "," or "]"
    END = "end"
    BROKEN = "broken"


class _ToolCallArrayReader(Reader):
    def __init__(self) -> None:
        self._mode = _Mode.START
        self._pos = 0
        self._calls: list[CallStream] = []
        self.failed = False

    def advance(self, text: str, out: DeltaBuilder) -> None:
        while self._mode not in (_Mode.END, _Mode.BROKEN):
            if self._mode is _Mode.CALL:
                call = self._calls[-1]
                self._pos += call.feed(text[self._pos:], out)
                if call.scanner.failed:
                    self._broken()
                elif call.scanner.done:
                    self._mode = _Mode.AFTER_ITEM
                else:
                    return
                continue
            start = skip_whitespace(text, self._pos)
            if start == len(text):
                return
            ch = text[start]
            self._pos = start + 1
            if self._mode is _Mode.START and ch == "[":
                self._mode = _Mode.ITEM
            elif self._mode is _Mode.ITEM and ch == "{":
                self._pos = start
                self._calls.append(CallStream(len(self._calls), ("parameters",)))
                self._mode = _Mode.CALL
            elif self._mode is _Mode.AFTER_ITEM and ch == ",":
                self._mode = _Mode.ITEM
            elif self._mode is _Mode.AFTER_ITEM and ch == "]":
                self._mode = _Mode.END
            else:
                self._broken()

    def finish(self, text: str, out: DeltaBuilder) -> None:
        if self._mode is not _Mode.END:
            self._broken()
        if not any(call.started for call in self._calls):
            out.content(text)

    def _broken(self) -> None:
        self._mode = _Mode.BROKEN
        self.failed = True


class ToolCallArrayParser(IncrementalToolParser):
    """A JSON array of ``{"name": ..., "parameters": {...}}``, each element one call."""

    def new_reader(self) -> Reader:
        return _ToolCallArrayReader()
