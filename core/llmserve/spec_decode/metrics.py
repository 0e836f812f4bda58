"""Counters of speculative decoding, named as vLLM's ``spec_decode_*`` metrics."""

from __future__ import annotations


class SpecDecodingStats:
    """Cumulative draft and acceptance counts over the engine's life."""

    def __init__(self, num_speculative_tokens: int) -> None:
        #: Verification steps of a request that had at least one draft.
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        #: [k] how often the draft at each position (0-based) was accepted.
        self.num_accepted_tokens_per_pos = [0] * num_speculative_tokens

    def observe(self, num_draft_tokens: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        per_pos = self.num_accepted_tokens_per_pos
        for i in range(num_accepted):
            per_pos[i] += 1

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / proposed drafts."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verification step: accepted drafts + the target's own one."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    def summary(self) -> dict:
        """The run's figures: acceptance, mean accepted length, acceptance by position."""
        per_pos = self.num_accepted_tokens_per_pos
        return {"num_drafts": self.num_drafts, "num_draft_tokens": self.num_draft_tokens,
                "num_accepted_tokens": self.num_accepted_tokens,
                "acceptance_rate": round(self.acceptance_rate, 4),
                "mean_accepted_length": round(self.mean_accepted_length, 4),
                "acceptance_by_position": [round(n / self.num_drafts, 4) if self.num_drafts
                                           else 0.0 for n in per_pos]}

    def as_dict(self) -> dict:
        return {"spec_decode_num_drafts": self.num_drafts,
                "spec_decode_num_draft_tokens": self.num_draft_tokens,
                "spec_decode_num_accepted_tokens": self.num_accepted_tokens,
                "spec_decode_num_accepted_tokens_per_pos": list(self.num_accepted_tokens_per_pos)}
