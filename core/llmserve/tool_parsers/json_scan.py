"""Reading one ``{"name": ..., "arguments": {...}}`` object a piece at a time.

The JSON-based call formats (Hermes, Llama 3.1, the array a ``tool_choice: "required"``
answer is constrained to) all wrap the same object. To stream a call, the name must be known
as soon as its string closes and the arguments sent as their text arrives, long before the
object is complete; ``json.loads`` cannot do that, so ``CallObjectScanner`` follows the
object's top level character by character (strings, escapes and nesting, not full JSON
validation) and keeps the raw text of the arguments value. When the object closes it is
checked with ``json.loads``, so a finished call is always valid JSON.

The arguments are kept as the model wrote them (its spacing and key order), so a streamed
call's fragments join to exactly the arguments the whole answer gives.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Optional

from llmserve.tool_parsers.base import DeltaBuilder, ToolCall

WHITESPACE = " \t\n\r"


class _Phase(Enum):
    BEFORE = "before"            # whitespace before the opening brace
    KEY_OR_END = "key_or_end"    # after "{" or ","
    KEY = "key"                  # inside a key string
    COLON = "colon"
    VALUE_START = "value_start"
    VALUE_STRING = "value_string"
    VALUE_NESTED = "value_nested"  # inside an object or array value
    VALUE_SCALAR = "value_scalar"  # a number, true, false or null
    AFTER_VALUE = "after_value"
    DONE = "done"
    FAILED = "failed"


class CallObjectScanner:
    """Reads one call object incrementally: ``feed`` it text until ``done`` or ``failed``.

    ``name`` is set once the name's string is complete; ``arguments`` is the raw text of the
    arguments value read so far (``"{}"`` for a finished object without one). An object whose
    name is not a string, whose arguments are not an object, or that is not valid JSON fails.
    """

    def __init__(self, argument_keys: tuple[str, ...] = ("arguments",),
                 name_key: str = "name") -> None:
        self._argument_keys = argument_keys
        self._name_key = name_key
        self._phase = _Phase.BEFORE
        self._source: list[str] = []
        self._key: list[str] = []
        self._current_key = ""
        self._escape = False
        # Inside a nested value: its depth and whether we are in one of its strings.
        self._depth = 0
        self._nested_string = False
        self._capture: Optional[str] = None  # "name" or "arguments" while reading that value
        self._name_raw: list[str] = []
        self._arguments: list[str] = []
        self._has_arguments = False
        self.name: Optional[str] = None
        #: The object's closing brace was read (it may still have failed validation).
        self.closed = False

    @property
    def done(self) -> bool:
        return self._phase is _Phase.DONE

    @property
    def failed(self) -> bool:
        return self._phase is _Phase.FAILED

    @property
    def arguments(self) -> str:
        if self.done and not self._has_arguments:
            return "{}"
        return "".join(self._arguments)

    def tool_call(self) -> ToolCall:
        """The finished call (only when ``done``)."""
        assert self.done and self.name is not None
        return ToolCall(self.name, self.arguments)

    def feed(self, text: str) -> int:
        """Read from ``text`` until the object ends (or fails) or the text does; returns the
        number of characters consumed."""
        i, n = 0, len(text)
        capture_from = 0
        while i < n and self._phase not in (_Phase.DONE, _Phase.FAILED):
            ch = text[i]
            phase = self._phase
            if phase is _Phase.BEFORE:
                if ch == "{":
                    self._phase = _Phase.KEY_OR_END
                elif ch not in WHITESPACE:
                    self._phase = _Phase.FAILED
                    break
            elif phase is _Phase.KEY_OR_END:
                if ch == '"':
                    self._key = []
                    self._phase = _Phase.KEY
                elif ch == "}":
                    self._phase = _Phase.DONE
                elif ch not in WHITESPACE:
                    self._phase = _Phase.FAILED
                    break
            elif phase is _Phase.KEY:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._current_key = _json_string('"' + "".join(self._key) + '"')
                    self._phase = _Phase.COLON if self._current_key is not None else _Phase.FAILED
                    i += 1
                    continue
                self._key.append(ch)
            elif phase is _Phase.COLON:
                if ch == ":":
                    self._phase = _Phase.VALUE_START
                elif ch not in WHITESPACE:
                    self._phase = _Phase.FAILED
                    break
            elif phase is _Phase.VALUE_START:
                if ch in WHITESPACE:
                    i += 1
                    continue
                if ch in ",}]:":
                    self._phase = _Phase.FAILED
                    break
                if not self._start_value():
                    break
                capture_from = i
                if ch == '"':
                    self._phase = _Phase.VALUE_STRING
                elif ch in "{[":
                    self._phase = _Phase.VALUE_NESTED
                    self._depth = 1
                    self._nested_string = False
                else:
                    self._phase = _Phase.VALUE_SCALAR
            elif phase is _Phase.VALUE_STRING:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._end_value(text, capture_from, i + 1)
            elif phase is _Phase.VALUE_NESTED:
                if self._nested_string:
                    if self._escape:
                        self._escape = False
                    elif ch == "\\":
                        self._escape = True
                    elif ch == '"':
                        self._nested_string = False
                elif ch == '"':
                    self._nested_string = True
                elif ch in "{[":
                    self._depth += 1
                elif ch in "}]":
                    self._depth -= 1
                    if self._depth == 0:
                        self._end_value(text, capture_from, i + 1)
            elif phase is _Phase.VALUE_SCALAR:
                if ch in WHITESPACE or ch in ",}":
                    self._end_value(text, capture_from, i)
                    continue  # the character ends the scalar and is read again after it
            elif phase is _Phase.AFTER_VALUE:
                if ch == ",":
                    self._phase = _Phase.KEY_OR_END
                elif ch == "}":
                    self._phase = _Phase.DONE
                elif ch not in WHITESPACE:
                    self._phase = _Phase.FAILED
                    break
            i += 1
        if self._capture is not None:
            self._captured(text[capture_from:i])
        self._source.append(text[:i])
        if self._phase is _Phase.DONE:
            self._validate()
        return i

    def _start_value(self) -> bool:
        key = self._current_key
        if key == self._name_key:
            if self.name is not None or self._name_raw:
                self._phase = _Phase.FAILED
                return False
            self._capture = "name"
        elif key in self._argument_keys:
            if self._has_arguments:
                self._phase = _Phase.FAILED
                return False
            self._has_arguments = True
            self._capture = "arguments"
        else:
            self._capture = None
        return True

    def _end_value(self, text: str, start: int, end: int) -> None:
        if self._capture is not None:
            self._captured(text[start:end])
            if self._capture == "name":
                name = _json_string("".join(self._name_raw))
                if name is None or not name:
                    self._phase = _Phase.FAILED
                    self._capture = None
                    return
                self.name = name
            self._capture = None
        self._phase = _Phase.AFTER_VALUE

    def _captured(self, piece: str) -> None:
        (self._name_raw if self._capture == "name" else self._arguments).append(piece)

    def _validate(self) -> None:
        self.closed = True
        try:
            obj = json.loads("".join(self._source))
        except ValueError:
            self._phase = _Phase.FAILED
            return
        arguments = next((obj[k] for k in self._argument_keys if k in obj), {})
        if not isinstance(obj.get(self._name_key), str) or not isinstance(arguments, dict):
            self._phase = _Phase.FAILED


def _json_string(raw: str) -> Optional[str]:
    """The value of the JSON string ``raw`` (quotes included); None if it is not one."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


class CallStream:
    """One call of a stream: its scanner, and how much of it has been sent."""

    def __init__(self, index: int, argument_keys: tuple[str, ...] = ("arguments",)) -> None:
        self.index = index
        self.scanner = CallObjectScanner(argument_keys)
        self._name_sent = False
        self._arguments_sent = 0

    @property
    def started(self) -> bool:
        """Whether its name has been sent (after which the call cannot be taken back)."""
        return self._name_sent

    def feed(self, text: str, out: DeltaBuilder) -> int:
        """Read ``text`` and send what became known; returns the characters consumed."""
        consumed = self.scanner.feed(text)
        if self.scanner.failed:
            return consumed
        if not self._name_sent:
            if self.scanner.name is None:
                return consumed
            out.call(self.index, name=self.scanner.name)
            self._name_sent = True
        arguments = self.scanner.arguments
        if len(arguments) > self._arguments_sent:
            out.call(self.index, arguments=arguments[self._arguments_sent:])
            self._arguments_sent = len(arguments)
        return consumed


def skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in WHITESPACE:
        pos += 1
    return pos


def partial_suffix(text: str, start: int, tag: str) -> int:
    """Length of the longest end of ``text[start:]`` that is a proper beginning of ``tag``:
    text that may still become the tag and must be held back."""
    for k in range(min(len(tag) - 1, len(text) - start), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
