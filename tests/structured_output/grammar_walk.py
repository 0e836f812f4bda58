"""A seeded random walk through a grammar, as a sampler that trusts the mask would take.

At each step the matcher fills its bitmask, the walk picks one allowed token and accepts it.
The end token is taken with probability ``p_eos`` whenever it is allowed; otherwise a token
is drawn uniformly from the allowed ones, whitespace-only tokens (which JSON allows almost
anywhere, and which a vocabulary trained on indented text has many of) only with
probability ``p_blank``. So walks explore the grammar yet end quickly. The text of the
accepted tokens is then checked by an independent recogniser (``json.loads`` and
``jsonschema``, Python's ``re``, a hand-written parser): anything the mask let through that
the recogniser rejects is a backend bug.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from llmserve.structured_output import GrammarMatcher, bitmask_width
from vocab_models import VocabModel


def allowed_tokens(bitmask_row: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token ids whose bit is set in one bitmask row, ascending."""
    bits = np.unpackbits(bitmask_row.view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab_size])


def mask_of(matcher: GrammarMatcher, vocab_size: int) -> np.ndarray:
    """The matcher's allowed tokens now, from a zeroed row (a row it did not write is
    empty, which every caller treats as a failure)."""
    bitmask = np.zeros((1, bitmask_width(vocab_size)), dtype=np.int32)
    matcher.fill_bitmask(bitmask, 0)
    return allowed_tokens(bitmask[0], vocab_size)


@dataclass
class Walk:
    """What one walk produced."""

    token_ids: list[int] = field(default_factory=list)
    #: Whether the walk ended by accepting an end token.
    terminated: bool = False
    #: Allowed tokens before each step (kept only when asked for).
    masks: list[np.ndarray] = field(default_factory=list)


def random_walk(matcher: GrammarMatcher, model: VocabModel, seed: int, max_steps: int = 120,
                p_eos: float = 0.7, p_blank: float = 0.1, keep_masks: bool = False) -> Walk:
    """Drive ``matcher`` with random allowed tokens until an end token or ``max_steps``.

    Checks on the way that the mask is never empty, never allows an id the tokenizer lacks
    (padding of the logits), that the token picked from it is accepted, and that accepting
    an end token terminates the matcher. (That the matcher does not report termination too
    early is a test of its own.)
    """
    rng = random.Random(seed)
    eos = set(model.eos_token_ids)
    num_tokens = len(model.tokenizer)
    walk = Walk()
    for _ in range(max_steps):
        allowed = mask_of(matcher, model.vocab_size)
        assert allowed.size, f"empty mask after {walk.token_ids}"
        assert allowed[-1] < num_tokens, f"padding id {allowed[-1]} allowed"
        if keep_masks:
            walk.masks.append(allowed)
        ends, blanks, others = [], [], []
        for t in allowed.tolist():
            (ends if t in eos else blanks if t in model.whitespace_ids else others).append(t)
        if ends and (rng.random() < p_eos or not (blanks or others)):
            token = rng.choice(ends)
        elif others and (not blanks or rng.random() >= p_blank):
            token = rng.choice(others)
        else:
            token = rng.choice(blanks)
        assert matcher.accept_token(token), f"mask allowed {token} but the matcher refused it"
        walk.token_ids.append(token)
        if token in eos:
            assert matcher.is_terminated(), "an accepted end token did not terminate"
            walk.terminated = True
            return walk
    return walk


def walk_text(model: VocabModel, token_ids: list[int]) -> str:
    """The text of a walk's tokens without its end token, as an engine shows a completion:
    decoded after other text, so a SentencePiece tokenizer keeps the leading space of the
    first token (the prefix ``"a"`` is decoded and cut off again)."""
    tokenizer = model.tokenizer
    body = [t for t in token_ids if t not in model.eos_token_ids]
    prefix = tokenizer.convert_tokens_to_ids("a")
    head = tokenizer.decode([prefix])
    full = tokenizer.decode([prefix] + body)
    assert full.startswith(head)
    return full[len(head):]
