"""The interface a tool-call parser implements, and the values it returns.

With ``tool_choice: "auto"`` the model decides whether to call a tool, and writes the call in
whatever format it was trained on (Hermes' ``<tool_call>`` tags, Llama 3.1's bare JSON, ...).
A ``ToolParser`` turns that raw text back into OpenAI's ``tool_calls``: all at once for a
whole answer (``extract_tool_calls``), or piece by piece while it streams
(``extract_tool_calls_streaming``, then ``finish_streaming``). Parsers are contributed by name
through the ``llmserve_tool_parsers`` hook and picked with ``llmserve serve
--tool-call-parser NAME``.

A parser knows nothing of HTTP: the server gives each call its ``id`` and ``type`` and builds
the response; a parser only says which text is content and which is a call's name and
arguments. This module imports nothing heavy, since it runs in the HTTP front end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional


@dataclass(frozen=True)
class ToolCall:
    """One complete call: the function's name and its arguments as JSON text (an object),
    exactly as OpenAI's ``function.arguments`` carries them."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ExtractedToolCalls:
    """What a whole answer held.

    ``tools_called`` is False when the text is not a (well-formed) tool call; ``tool_calls``
    is then empty and ``content`` is the whole text. When it is True, ``content`` is the text
    outside the calls, or None when there is none.
    """

    tools_called: bool
    tool_calls: list[ToolCall]
    content: Optional[str]


@dataclass(frozen=True)
class DeltaToolCall:
    """A piece of one call in a stream.

    ``index`` is the call's position in the message's ``tool_calls`` (0, 1, ...). The first
    piece of a call carries its ``name``; later pieces leave it None. ``arguments`` is the next
    fragment of the arguments' JSON text (possibly empty): joined in order, a call's fragments
    are its complete arguments.
    """

    index: int
    name: Optional[str] = None
    arguments: str = ""


@dataclass(frozen=True)
class DeltaMessage:
    """What one step of a stream adds: new content text, new pieces of calls, or both."""

    content: Optional[str] = None
    tool_calls: tuple[DeltaToolCall, ...] = ()


class DeltaBuilder:
    """Collects the pieces one parsing step produces into one ``DeltaMessage``, with at most one
    ``DeltaToolCall`` per call index (a name and its first argument fragments merged)."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._calls: dict[int, tuple[Optional[str], list[str]]] = {}

    def content(self, text: str) -> None:
        if text:
            self._content.append(text)

    def call(self, index: int, *, name: Optional[str] = None, arguments: str = "") -> None:
        previous_name, fragments = self._calls.get(index, (None, []))
        self._calls[index] = (name if name is not None else previous_name, fragments)
        if arguments:
            fragments.append(arguments)

    def build(self) -> Optional[DeltaMessage]:
        """The collected message, or None when nothing was collected."""
        if not self._content and not self._calls:
            return None
        calls = tuple(DeltaToolCall(index, name, "".join(fragments))
                      for index, (name, fragments) in sorted(self._calls.items()))
        return DeltaMessage("".join(self._content) or None, calls)


class ToolParser(ABC):
    """Reads tool calls out of one model answer.

    The server constructs a parser with the tokenizer for each choice of each request, and
    uses it either for a whole answer (``extract_tool_calls``) or for a stream
    (``extract_tool_calls_streaming`` on every new piece of text, then ``finish_streaming``
    once), never both; a parser may therefore keep the state of the stream it reads.

    A stream cannot take back what it sent: a parser should send a call's name only once it is
    sure the text is a call, and hold back text that may still turn out to be the start of a
    call (half of an opening tag). Whatever it held back is released by ``finish_streaming``.
    """

    #: Whether the text the model writes around calls consists of special tokens that
    #: ``skip_special_tokens`` would remove; if so the server detokenizes with them kept.
    keeps_special_tokens: ClassVar[bool] = False

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        """Split a whole answer into content and tool calls. Text that is not a well-formed
        call is content: return ``ExtractedToolCalls(False, [], text)``."""

    @abstractmethod
    def extract_tool_calls_streaming(self, current_text: str,
                                     delta_text: str) -> Optional[DeltaMessage]:
        """Read the next piece of a stream.

        :param current_text: the answer so far, ``delta_text`` included.
        :param delta_text: what this step added to it.

        **Returns:** the content and call pieces that can be sent now, or None for nothing
        (yet).
        """

    def finish_streaming(self, current_text: str) -> Optional[DeltaMessage]:
        """The stream ended with ``current_text``: return what was held back, or None. The
        default holds nothing back."""
        return None
