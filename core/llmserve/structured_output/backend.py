"""The structured-output backend interface: what a grammar engine gives the core.

A backend is built once per model, in the engine-core process, from the model's tokenizer
(``VocabInfo``), so the work of reading the vocabulary happens once. It compiles a
``GrammarSpec`` (off the step loop, on the structured-output manager's threads) into an
opaque compiled grammar, and makes one ``GrammarMatcher`` per request from it.

The token mask is a host ``numpy.int32`` array ``[rows, ceil(vocab_size / 32)]``: bit ``j`` of
word ``w`` set means token ``32 * w + j`` may come next. The core allocates it, the backend
fills the rows of its requests (``fill_bitmasks``, which a backend may parallelise), and the
runner applies the array on the device in one operation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from llmserve.structured_output.params import GrammarSpec


class GrammarError(ValueError):
    """A constraint the backend cannot compile: invalid, or using a feature it lacks. The
    message names the problem; front ends answer it with HTTP 400."""


@dataclass(frozen=True)
class VocabInfo:
    """The model's vocabulary, as backends build their tokenizer tables from it."""

    #: The Hugging Face tokenizer of the model (a fast tokenizer).
    tokenizer: Any
    #: Width of the model's logits; may exceed the tokenizer's length (padded embeddings).
    vocab_size: int
    #: Tokens that end a request: allowed, and required, once the grammar is complete.
    eos_token_ids: tuple[int, ...]


def bitmask_width(vocab_size: int) -> int:
    """Number of int32 words one row of the token mask needs."""
    return (vocab_size + 31) // 32


class GrammarMatcher(ABC):
    """Where one request stands in its grammar. Used from the engine's step thread only."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one sampled token; False (and no change) if the grammar forbids it."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens (for tokens that are withdrawn, such
        as rejected speculative tokens)."""

    @abstractmethod
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the set of tokens allowed next into ``bitmask[row]``."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """Whether the grammar is complete and its end (an EOS token) was accepted."""


class StructuredOutputBackend(ABC):
    """A grammar engine, contributed through ``llmserve_structured_output_backends``.

    Constructed once per model with ``backend_cls(vocab)``, lazily, on a manager thread.
    ``compile`` runs on the manager's thread pool, possibly several at once; the other
    methods run on the engine's step thread.
    """

    #: The name users select it by (``--structured-outputs-backend NAME``).
    name: ClassVar[str]

    def __init__(self, vocab: VocabInfo) -> None:
        self.vocab = vocab

    @abstractmethod
    def compile(self, spec: GrammarSpec) -> Any:
        """Compile a constraint; raise ``GrammarError`` naming the problem if it is invalid
        or unsupported. The result is cached by the core and shared between requests."""

    @abstractmethod
    def matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the start of a compiled grammar (one per request)."""

    def fill_bitmasks(self, matchers: Sequence[GrammarMatcher], bitmask: np.ndarray,
                      rows: Sequence[int]) -> None:
        """Fill ``bitmask[rows[i]]`` for ``matchers[i]``. Override to fill many rows at once
        (in parallel, without the GIL); the default fills them one by one."""
        for matcher, row in zip(matchers, rows):
            matcher.fill_bitmask(bitmask, row)
