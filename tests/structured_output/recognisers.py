"""Independent recognisers for the grammars the suites constrain to, written from the
grammars' definitions (not from either backend), to judge what the backends let through."""

from __future__ import annotations

#: Arithmetic over integers, in xgrammar's EBNF (GBNF) notation.
ARITHMETIC_EBNF = r"""
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"
"""

#: A list of key=value pairs whose values nest, in Lark notation with regex terminals.
PAIRS_LARK = r"""
start: pair ("," pair)*
pair: KEY "=" value
value: NUMBER | WORD | list
list: "[" [value (";" value)*] "]"
KEY: /[a-z]{1,5}/
NUMBER: /-?[0-9]{1,3}/
WORD: /"[a-z]{0,4}"/
"""


class _Parser:
    """A recursive-descent parser over one string; each method consumes one construct or
    raises ``SyntaxError``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def take(self, chars: str) -> str:
        ch = self.peek()
        if not ch or ch not in chars:
            raise SyntaxError(f"expected one of {chars!r} at {self.pos} in {self.text!r}")
        self.pos += 1
        return ch

    def run(self, chars: str, low: int, high: int) -> str:
        start = self.pos
        while self.pos - start < high and self.peek() and self.peek() in chars:
            self.pos += 1
        if self.pos - start < low:
            raise SyntaxError(f"expected {low}+ of {chars!r} at {start} in {self.text!r}")
        return self.text[start:self.pos]

    def end(self) -> None:
        if self.pos != len(self.text):
            raise SyntaxError(f"trailing text at {self.pos} in {self.text!r}")


DIGITS = "0123456789"
LOWER = "abcdefghijklmnopqrstuvwxyz"


def is_arithmetic(text: str) -> bool:
    """Whether ``text`` is a sentence of ``ARITHMETIC_EBNF``."""
    p = _Parser(text)

    def expr() -> None:
        term()
        while p.peek() and p.peek() in "+-":
            p.take("+-")
            term()

    def term() -> None:
        factor()
        while p.peek() and p.peek() in "*/":
            p.take("*/")
            factor()

    def factor() -> None:
        if p.peek() == "(":
            p.take("(")
            expr()
            p.take(")")
        else:
            p.run(DIGITS, 1, len(text))

    try:
        expr()
        p.end()
    except SyntaxError:
        return False
    return True


def is_pairs(text: str) -> bool:
    """Whether ``text`` is a sentence of ``PAIRS_LARK``. Its terminals never overlap (a
    value starts with a digit or ``-``, ``"`` or ``[``), so maximal munch is exact."""
    p = _Parser(text)

    def value() -> None:
        ch = p.peek()
        if ch == "[":
            p.take("[")
            if p.peek() != "]":
                value()
                while p.peek() == ";":
                    p.take(";")
                    value()
            p.take("]")
        elif ch == '"':
            p.take('"')
            p.run(LOWER, 0, 4)
            p.take('"')
        else:
            if ch == "-":
                p.take("-")
            p.run(DIGITS, 1, 3)
            if p.peek() and p.peek() in DIGITS:
                raise SyntaxError("number longer than 3 digits")

    def pair() -> None:
        p.run(LOWER, 1, 5)
        p.take("=")
        value()

    try:
        pair()
        while p.peek() == ",":
            p.take(",")
            pair()
        p.end()
    except SyntaxError:
        return False
    return True


def has_whitespace_outside_strings(text: str) -> bool:
    """Whether JSON text has whitespace between its tokens (not inside a string)."""
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), (escaped or ch != '"')
        elif ch == '"':
            in_string = True
        elif ch.isspace():
            return True
    return False
