"""Seeded random JSON schemas whose valid documents are short.

The schemas use the keywords that both xgrammar and llguidance implement: objects with
required and optional properties (``additionalProperties: false``), nested objects, arrays
with ``minItems``/``maxItems``, strings with ``enum``, ``maxLength`` or an anchored
``pattern``, integers with ``minimum``/``maximum``, numbers, booleans, null, ``anyOf`` and
``const``. Depth, property counts and lengths are bounded so that a document fits in a few
dozen tokens; every string is bounded, so a grammar walk always has a way to close it.
"""

from __future__ import annotations

import random
from typing import Any

#: Property names: short, some sharing prefixes (a grammar must not confuse ``id``/``idx``).
NAMES = ["id", "idx", "name", "ok", "tags", "x", "y", "value", "kind", "user", "a", "b"]

#: Anchored patterns in the regex subset both backends and Python's ``re`` read alike.
PATTERNS = [r"^[a-z]{1,6}$", r"^[0-9]{3}-[0-9]{2}$", r"^(ab|cd)+$", r"^[A-Z][a-z]{0,4}$",
            r"^x[0-9a-f]{2}$", r"^(yes|no|maybe)$"]

#: String values for ``enum`` and ``const``, including escapes and non-ASCII characters.
WORDS = ["red", "green", "", "a b", 'say "hi"', "tab\there", "café", "日本", "back\\slash"]

SCALAR_KINDS = ("string", "integer", "number", "boolean", "null", "enum", "const")


class SchemaGenerator:
    """``SchemaGenerator(seed).schema()`` returns a fresh schema each call, reproducibly."""

    def __init__(self, seed: int, max_depth: int = 3) -> None:
        self.rng = random.Random(seed)
        self.max_depth = max_depth

    def schema(self) -> dict[str, Any]:
        """A top-level schema: mostly an object, sometimes an array or a scalar."""
        roll = self.rng.random()
        if roll < 0.7:
            return self.object(0)
        if roll < 0.85:
            return self.array(0)
        return self.value(self.max_depth)

    def value(self, depth: int) -> dict[str, Any]:
        rng = self.rng
        if depth < self.max_depth:
            roll = rng.random()
            if roll < 0.2:
                return self.object(depth + 1)
            if roll < 0.35:
                return self.array(depth + 1)
            if roll < 0.45:
                return {"anyOf": [self.value(depth + 1) for _ in range(rng.randint(2, 3))]}
        return self.scalar()

    def object(self, depth: int) -> dict[str, Any]:
        rng = self.rng
        names = rng.sample(NAMES, rng.randint(0 if depth else 1, 4))
        required = [n for n in names if rng.random() < 0.6]
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {n: self.value(depth) for n in names},
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        return schema

    def array(self, depth: int) -> dict[str, Any]:
        rng = self.rng
        low = rng.randint(0, 2)
        return {"type": "array", "items": self.value(depth), "minItems": low,
                "maxItems": low + rng.randint(0, 2)}

    def scalar(self) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choice(SCALAR_KINDS)
        if kind == "string":
            roll = rng.random()
            if roll < 0.5:
                return {"type": "string", "maxLength": rng.randint(0, 8)}
            if roll < 0.8:
                return {"type": "string", "pattern": rng.choice(PATTERNS)}
            low = rng.randint(0, 3)
            return {"type": "string", "minLength": low, "maxLength": low + rng.randint(0, 4)}
        if kind == "integer":
            low = rng.randint(-50, 50)
            bounds = {"minimum": low, "maximum": low + rng.choice([0, 1, 9, 100, 5000])}
            return {"type": "integer", **rng.choice([bounds, {"minimum": low}, {}])}
        if kind == "enum":
            pool = WORDS + [1, 2.5, True, None]
            return {"enum": rng.sample(pool, rng.randint(1, 4))}
        if kind == "const":
            return {"const": rng.choice(WORDS + [0, -7, False, None])}
        return {"type": kind}
