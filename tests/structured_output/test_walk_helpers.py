"""The helpers the structured-output suites judge backends with: if these were wrong, the
suites would pass broken backends or fail good ones."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest

from grammar_walk import allowed_tokens
from random_schemas import SchemaGenerator
from recognisers import has_whitespace_outside_strings, is_arithmetic, is_pairs


def test_allowed_tokens_reads_bits_little_endian():
    """Bit j of word w is token 32 * w + j; ids past the vocabulary are ignored."""
    row = np.array([1 | 1 << 31, 0, 1 << 4], dtype=np.uint32).view(np.int32)
    assert allowed_tokens(row, 96).tolist() == [0, 31, 68]
    assert allowed_tokens(row, 60).tolist() == [0, 31]
    assert allowed_tokens(np.full(2, -1, dtype=np.int32), 40).tolist() == list(range(40))


@pytest.mark.parametrize("text, expected", [
    ("1", True), ("12+3*(4-5)/6", True), ("((7))", True), ("0*0-00", True),
    ("", False), ("1+", False), ("(1", False), ("1)", False), ("-1", False), ("1++2", False),
    ("1 + 2", False), ("()", False), ("2**3", False),
])
def test_arithmetic_recogniser(text, expected):
    assert is_arithmetic(text) is expected


@pytest.mark.parametrize("text, expected", [
    ("a=1", True), ('ab=[1;"x"],c=-7', True), ("k=[[];[-1;2]]", True), ('abcde=""', True),
    ("a=123", True), ("", False), ("a=1234", False), ("abcdef=1", False), ('a="abcde"', False),
    ("a=[1;]", False), ("a=1,", False), ("A=1", False), ("a=[1,2]", False), ("a= 1", False),
])
def test_pairs_recogniser(text, expected):
    assert is_pairs(text) is expected


@pytest.mark.parametrize("text, expected", [
    ('{"a":1}', False), ('{"a b":"c\\"  d"}', False), ('{"a": 1}', True), ('[1,\n2]', True),
    ('"\\\\" ', True), ('"x\\\\"', False),
])
def test_whitespace_outside_strings(text, expected):
    assert has_whitespace_outside_strings(text) is expected


def test_schema_generator_is_seeded_and_valid():
    first = [SchemaGenerator(5).schema() for _ in range(3)]
    again = [SchemaGenerator(5).schema() for _ in range(3)]
    assert first == again
    generator = SchemaGenerator(6)
    schemas = [generator.schema() for _ in range(200)]
    assert len({repr(s) for s in schemas}) > 150
    keywords = set()

    def collect(node):
        if isinstance(node, dict):
            keywords.update(node)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)
        collect(schema)
    assert {"required", "additionalProperties", "minItems", "maxItems", "enum", "maxLength",
            "pattern", "minimum", "maximum", "anyOf", "const"} <= keywords
