"""``hermes``: calls in ``<tool_call>`` tags, as Hermes 2 Pro, Qwen2.5 and Qwen3 write them.

::

    Let me look that up.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Each tag holds one JSON object with ``name`` and ``arguments``; a model may write several.
Text outside the tags is content; whitespace that only separates it from the calls is not. A
missing ``</tool_call>`` is forgiven (models stop at end-of-turn), a tag whose content is not
such an object is not: the whole answer is then content.
"""

from __future__ import annotations

from enum import Enum

from llmserve.tool_parsers.base import DeltaBuilder
from llmserve.tool_parsers.incremental import IncrementalToolParser, Reader
from llmserve.tool_parsers.json_scan import CallStream, partial_suffix, skip_whitespace

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


class _Mode(Enum):
    CONTENT = "content"
    CALL = "call"
    AFTER_CALL = "after_call"  # the object is read; a closing tag may follow
    RAW = "raw"                # after a malformed call: the rest is content


class HermesReader(Reader):
    def __init__(self) -> None:
        self._mode = _Mode.CONTENT
        self._pos = 0
        self._held_whitespace = ""  # content's trailing whitespace: dropped if a call follows
        self._after_call = False    # the text here follows a call
        self._sent_content = False
        self._call_start = 0        # where the current call's opening tag begins
        self._whitespace_before_call = ""
        self._calls: list[CallStream] = []
        self.failed = False

    def advance(self, text: str, out: DeltaBuilder) -> None:
        while True:
            if self._mode is _Mode.CONTENT:
                start = text.find(OPEN_TAG, self._pos)
                if start < 0:
                    end = len(text) - partial_suffix(text, self._pos, OPEN_TAG)
                    self._content(text[self._pos:end], out)
                    self._pos = end
                    return
                self._content(text[self._pos:start], out)
                self._whitespace_before_call, self._held_whitespace = self._held_whitespace, ""
                self._call_start = start
                self._pos = start + len(OPEN_TAG)
                self._calls.append(CallStream(len(self._calls)))
                self._mode = _Mode.CALL
            elif self._mode is _Mode.CALL:
                call = self._calls[-1]
                self._pos += call.feed(text[self._pos:], out)
                if call.scanner.failed:
                    self._malformed(out)
                elif call.scanner.done:
                    self._mode = _Mode.AFTER_CALL
                else:
                    return
            elif self._mode is _Mode.AFTER_CALL:
                start = skip_whitespace(text, self._pos)
                rest = text[start:]
                if rest.startswith(CLOSE_TAG):
                    self._pos = start + len(CLOSE_TAG)
                elif CLOSE_TAG.startswith(rest):
                    return  # nothing yet, or part of the closing tag
                else:
                    self._pos = start
                self._mode = _Mode.CONTENT
                self._after_call = True
            else:
                out.content(text[self._pos:])
                self._pos = len(text)
                return

    def finish(self, text: str, out: DeltaBuilder) -> None:
        if self._mode is _Mode.CALL:
            self._malformed(out)
            self.advance(text, out)
        elif self._mode is _Mode.CONTENT:
            self._content(text[self._pos:], out)
            self._pos = len(text)
        if not self._calls:
            out.content(self._held_whitespace)
        self._held_whitespace = ""

    def _content(self, piece: str, out: DeltaBuilder) -> None:
        """Send content, holding back trailing whitespace. Whitespace after a call separates
        it from content sent before the call, and is dropped when there is none."""
        if self._after_call and not self._sent_content:
            piece = piece.lstrip()
        text = self._held_whitespace + piece
        kept = text.rstrip()
        self._held_whitespace = text[len(kept):]
        if kept:
            out.content(kept)
            self._sent_content = True

    def _malformed(self, out: DeltaBuilder) -> None:
        """The current call is not a call. If nothing of it was sent, it is content from its
        opening tag on, and so is the rest of the answer. If its name was sent, it stays a
        call (a stream cannot take it back): a complete object is read past, else the rest of
        the answer is content from where reading stopped."""
        self.failed = True
        call = self._calls[-1]
        if not call.started:
            self._calls.pop()
            out.content(self._whitespace_before_call)
            self._pos = self._call_start
            self._mode = _Mode.RAW
        else:
            self._mode = _Mode.AFTER_CALL if call.scanner.closed else _Mode.RAW


class HermesToolParser(IncrementalToolParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number of times."""

    # Hermes 2 Pro's tokenizer makes the tags special tokens.
    keeps_special_tokens = True

    def new_reader(self) -> Reader:
        return HermesReader()
