"""Parsers written once, as a stream reader, and used for whole answers too.

An ``IncrementalToolParser`` only describes how to read a stream (a ``Reader``); reading a
whole answer is reading it as one piece and finishing. The two paths therefore cannot
disagree: a stream's content and call fragments, joined, are exactly what the whole answer
gives (unless the text is malformed, when a whole answer is all content and a stream keeps
what it already sent).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

from llmserve.tool_parsers.base import (
    DeltaBuilder,
    DeltaMessage,
    ExtractedToolCalls,
    ToolCall,
    ToolParser,
)


class Reader(ABC):
    """The state of reading one answer. ``advance`` is given the whole text so far each time
    and keeps its own position in it."""

    #: Set when the text turned out not to be well-formed calls.
    failed: bool = False

    @abstractmethod
    def advance(self, text: str, out: DeltaBuilder) -> None:
        """Read what ``text`` added since the last call; put what can be sent into ``out``."""

    @abstractmethod
    def finish(self, text: str, out: DeltaBuilder) -> None:
        """The answer is complete: release what was held back."""


class IncrementalToolParser(ToolParser):
    """A ``ToolParser`` defined by its ``Reader``."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self._stream: Optional[Reader] = None

    @abstractmethod
    def new_reader(self) -> Reader:
        """A reader at the start of an answer."""

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        reader = self.new_reader()
        out = DeltaBuilder()
        reader.advance(text, out)
        reader.finish(text, out)
        message = out.build()
        if reader.failed or message is None or not message.tool_calls:
            return ExtractedToolCalls(False, [], text)
        calls = [ToolCall(call.name or "", call.arguments) for call in message.tool_calls]
        return ExtractedToolCalls(True, calls, message.content)

    def extract_tool_calls_streaming(self, current_text: str,
                                     delta_text: str) -> Optional[DeltaMessage]:
        if self._stream is None:
            self._stream = self.new_reader()
        out = DeltaBuilder()
        self._stream.advance(current_text, out)
        return out.build()

    def finish_streaming(self, current_text: str) -> Optional[DeltaMessage]:
        if self._stream is None:
            self._stream = self.new_reader()
        out = DeltaBuilder()
        self._stream.advance(current_text, out)
        self._stream.finish(current_text, out)
        return out.build()
