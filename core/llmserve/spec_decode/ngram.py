"""Prompt lookup: draft the tokens that followed the last earlier occurrence of the sequence's
own recent n-gram (vLLM's ``ngram`` method).

For ``n`` from ``max_n`` down to ``min_n``, the last ``n`` tokens are looked up in the rest
of the sequence (prompt and output so far); at the most recent match, the up to ``k`` tokens
that followed it are the drafts. Longer n-grams are tried first: a longer match predicts
better. No match: no drafts, and the step decodes one token as without speculation.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from llmserve.spec_decode.proposer import ProposalBatch, Proposer, ProposerContext


def propose_ngram(tokens: np.ndarray, k: int, min_n: int, max_n: int) -> np.ndarray:
    """Up to ``k`` draft tokens for the sequence ``tokens`` (1-D int array)."""
    if not 1 <= min_n <= max_n:
        raise ValueError(f"need 1 <= prompt_lookup_min ({min_n}) <= prompt_lookup_max ({max_n})")
    if k < 1:
        raise ValueError(f"num_speculative_tokens must be >= 1, got {k}")
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = tokens[length - n:]
        # Windows that start before the suffix itself and leave a token after them.
        windows = sliding_window_view(tokens[:length - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if len(hits):
            start = hits[-1] + n
            return tokens[start:start + k].copy()
    return tokens[:0].copy()


class NgramProposer(Proposer):
    """``{"method": "ngram"}``: prompt lookup over each request's own tokens, on the host.

    ``prompt_lookup_max`` defaults to 5 and ``prompt_lookup_min`` to 1 (or to the max, when
    only the max is given and is smaller).
    """

    def __init__(self, context: ProposerContext) -> None:
        super().__init__(context)
        cfg = context.config
        self.max_n = cfg.prompt_lookup_max or max(5, cfg.prompt_lookup_min or 1)
        self.min_n = cfg.prompt_lookup_min or 1
        if self.min_n > self.max_n:
            raise ValueError(f"prompt_lookup_min ({self.min_n}) must be <= prompt_lookup_max "
                             f"({self.max_n})")

    def propose(self, batch: ProposalBatch) -> list[np.ndarray]:
        tokens = batch.token_ids
        return [propose_ngram(tokens[row, :n], int(d), self.min_n, self.max_n) if d else
                tokens[row, :0]
                for row, n, d in zip(batch.rows.tolist(), batch.num_tokens.tolist(),
                                     batch.max_drafts.tolist())]
