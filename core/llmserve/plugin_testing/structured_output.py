"""Conformance checks for a structured-output backend: what the engine relies on.

A plugin that contributes a backend through ``llmserve_structured_output_backends`` runs
``check_structured_output_backend(backend_cls, vocab, spec, valid_text)`` with one constraint
its backend supports and one text that constraint accepts. Each check raises
``AssertionError`` naming what broke:

- compile: the constraint compiles, and a broken constraint (``bad_spec``) raises
  ``GrammarError`` (a ``ValueError``) instead of anything else;
- mask: ``fill_bitmask`` writes only its own row, and every token of ``valid_text`` is allowed
  at its turn; allowed tokens are accepted (and rolled back), a forbidden one is refused by
  ``accept_token`` with the state unchanged;
- end: once ``valid_text`` is accepted, the end token is allowed, and accepting it
  terminates the matcher (the engine then finishes the request with ``stop``);
- rollback: rolling back restores the earlier mask;
- batch: ``fill_bitmasks`` over several matchers and rows equals filling them one by one.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from llmserve.structured_output.backend import (GrammarError, StructuredOutputBackend,
                                                VocabInfo, bitmask_width)
from llmserve.structured_output.params import GrammarSpec

__all__ = ["allowed_tokens", "check_structured_output_backend"]


def allowed_tokens(bitmask: np.ndarray, row: int, vocab_size: int) -> np.ndarray:
    """The token ids that row ``row`` of a bitmask allows."""
    bits = np.unpackbits(bitmask[row].view(np.uint8), bitorder="little")[:vocab_size]
    return np.nonzero(bits)[0]


def _tokenize(tokenizer, text: str) -> list[int]:
    """``text``'s tokens as they would follow other text: SentencePiece tokenizers put a
    word-start marker (a space) before the first piece of a string, which a grammar that
    begins with ``{`` rightly refuses. Tokenizing after a newline anchor and dropping the
    anchor's tokens avoids it; tokenizers that merge across the anchor get a plain encode."""
    anchor = tokenizer.encode("\n", add_special_tokens=False)
    ids = tokenizer.encode("\n" + text, add_special_tokens=False)
    if ids[:len(anchor)] == anchor and tokenizer.decode(ids[len(anchor):]) == text:
        return ids[len(anchor):]
    return tokenizer.encode(text, add_special_tokens=False)


def check_structured_output_backend(backend_cls: type[StructuredOutputBackend],
                                    vocab: VocabInfo, spec: GrammarSpec, valid_text: str,
                                    bad_spec: Optional[GrammarSpec] = None) -> None:
    """Run the compile / mask / end / rollback / batch checks on ``backend_cls``."""
    assert isinstance(backend_cls.name, str) and backend_cls.name, "backend needs a name"
    backend = backend_cls(vocab)
    compiled = backend.compile(spec)
    if bad_spec is not None:
        try:
            backend.compile(bad_spec)
        except GrammarError:
            pass
        else:
            raise AssertionError(f"compiling {bad_spec.describe()} did not raise GrammarError")

    vs, width = vocab.vocab_size, bitmask_width(vocab.vocab_size)
    tokens = _tokenize(vocab.tokenizer, valid_text)
    assert tokens, "valid_text must tokenize to at least one token"
    eos = set(vocab.eos_token_ids)

    matcher = backend.matcher(compiled)
    masks = []
    for i, tok in enumerate(tokens):
        bitmask = np.zeros((3, width), dtype=np.int32)
        matcher.fill_bitmask(bitmask, 1)
        assert not bitmask[0].any() and not bitmask[2].any(), \
            "fill_bitmask wrote outside its row"
        allowed = set(allowed_tokens(bitmask, 1, vs).tolist())
        masks.append(bitmask[1].copy())
        assert tok in allowed, (f"token {tok} ({vocab.tokenizer.decode([tok])!r}) of the valid "
                                f"text is not allowed at position {i}")
        for other in sorted(allowed)[:8]:  # the mask and accept_token agree
            assert matcher.accept_token(other), \
                f"the mask allows token {other}, which accept_token refuses"
            matcher.rollback(1)
        forbidden = next((t for t in range(vs) if t not in allowed), None)
        if forbidden is not None:
            assert not matcher.accept_token(forbidden), \
                f"accept_token took token {forbidden}, which the mask forbids"
            again = np.zeros((3, width), dtype=np.int32)
            matcher.fill_bitmask(again, 1)
            assert np.array_equal(again[1], bitmask[1]), "a refused token changed the state"
        assert matcher.accept_token(tok), f"accept_token refused allowed token {tok}"
        assert not matcher.is_terminated(), "terminated before the end token"

    bitmask = np.zeros((1, width), dtype=np.int32)
    matcher.fill_bitmask(bitmask, 0)
    end = eos & set(allowed_tokens(bitmask, 0, vs).tolist())
    assert end, "no end token is allowed after the valid text"

    if len(tokens) > 1:
        matcher.rollback(1)
        again = np.zeros((1, width), dtype=np.int32)
        matcher.fill_bitmask(again, 0)
        assert np.array_equal(again[0], masks[-1]), "rollback(1) did not restore the mask"
        assert matcher.accept_token(tokens[-1]), "re-accepting after rollback failed"

    assert matcher.accept_token(min(end)), "accept_token refused the allowed end token"
    assert matcher.is_terminated(), "accepting the end token did not terminate the matcher"

    fresh = [backend.matcher(compiled) for _ in range(3)]
    for i, m in enumerate(fresh):  # matcher i is i tokens into the valid text
        for tok in tokens[:i]:
            m.accept_token(tok)
    one_by_one = np.zeros((5, width), dtype=np.int32)
    for m, row in zip(fresh, (4, 0, 2)):
        m.fill_bitmask(one_by_one, row)
    batched = np.zeros((5, width), dtype=np.int32)
    backend.fill_bitmasks(fresh, batched, [4, 0, 2])
    assert np.array_equal(batched, one_by_one), "fill_bitmasks differs from fill_bitmask"
