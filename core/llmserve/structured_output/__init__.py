"""Structured outputs: constrain a request's tokens to a JSON schema, regex, choice or grammar.

``StructuredOutputsParams`` is what a request asks for; ``StructuredOutputBackend`` and
``GrammarMatcher`` are what a backend plugin implements (contributed through the
``llmserve_structured_output_backends`` hook); ``StructuredOutputManager`` runs them in the
engine core.
"""

from llmserve.structured_output.backend import (GrammarError, GrammarMatcher,
                                                StructuredOutputBackend, VocabInfo,
                                                bitmask_width)
from llmserve.structured_output.params import GrammarSpec, StructuredOutputsParams

__all__ = [
    "GrammarError",
    "GrammarMatcher",
    "GrammarSpec",
    "StructuredOutputBackend",
    "StructuredOutputsParams",
    "VocabInfo",
    "bitmask_width",
]
