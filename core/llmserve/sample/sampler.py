"""The sampler: processed logits -> one token per request, plus logprobs, vLLM v1 semantics.

Everything is batched tensor work with no device->host sync; the only Python loops run over
the rows that need one (seeded rows' noise, per-request callables). Random rows are sampled
with the exponential race: ``argmax_i(p_i / E_i)`` with ``E_i ~ Exponential(1)`` picks ``i``
with probability ``p_i``, and unlike ``torch.multinomial`` needs no sync and lets a seeded
row draw its noise from its own generator, so its tokens do not depend on the rest of the
batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from llmserve.sample.logits_processor import LogitsProcessor, make_logits_processors
from llmserve.sample.metadata import SamplingMetadata
from llmserve.scheduler.output import LogprobsLists

_NEG_INF = float("-inf")


class LogprobsTensors(NamedTuple):
    """Logprobs of N positions. Column 0: the sampled (or given) token; 1..k: the top-k."""

    token_ids: torch.Tensor  # [N, k+1] long
    logprobs: torch.Tensor  # [N, k+1] float32
    #: [N] long: 1 + number of tokens with a strictly higher logprob than column 0's.
    ranks: torch.Tensor

    def tolists(self) -> LogprobsLists:
        """Python lists, with one device->host transfer."""
        ids, lps, ranks = self.token_ids, self.logprobs, self.ranks
        if ids.device.type != "cpu":
            # float64 holds token ids, ranks and float32 logprobs exactly: pack, copy once.
            width = ids.shape[1]
            packed = torch.cat([ids.double(), lps.double(), ranks.double()[:, None]], 1).cpu()
            ids, lps, ranks = packed[:, :width].long(), packed[:, width:-1], packed[:, -1].long()
        return LogprobsLists(ids.tolist(), lps.tolist(), ranks.tolist())


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [num_reqs] long
    logprobs: LogprobsTensors | None


class Sampler:
    """Turns one step's logits into tokens. Holds only the batch-level processors to run.

    ``logits_processors`` defaults to the built-ins; pass ``make_logits_processors(classes)``
    to add plugin ones (the built-ins always run first, once).
    """

    def __init__(self, logits_processors: Sequence[LogitsProcessor] | None = None):
        self.logits_processors = (
            make_logits_processors() if logits_processors is None else list(logits_processors)
        )

    def __call__(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        return self.forward(logits, md)

    def forward(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        """Sample one token per row of ``logits`` ``[md.num_reqs, vocab]``.

        ``logits`` may be modified in place (pass a clone to keep it).
        """
        logits = logits.to(torch.float32)
        # vLLM v1 returns the model's own distribution, before any processing.
        raw_logprobs = None
        if md.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        for proc in self.logits_processors:
            logits = proc.apply(logits, md)
        if md.penalty_rows is not None:
            logits = apply_penalties(logits, md)
        sampled = sample(logits, md)
        logprobs = None
        if raw_logprobs is not None:
            logprobs = gather_logprobs(raw_logprobs, md.max_num_logprobs, sampled)
        return SamplerOutput(sampled, logprobs)

    def verification_inputs(self, logits: torch.Tensor, md: SamplingMetadata
                            ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """What the rejection sampler needs of positions scored for speculative decoding,
        processed as ``forward`` processes them: (the probabilities random rows draw from
        [N, V], None when every row is greedy; the greedy token of each row [N])."""
        logits = logits.to(torch.float32)
        for proc in self.logits_processors:
            logits = proc.apply(logits, md)
        if md.penalty_rows is not None:
            logits = apply_penalties(logits, md)
        greedy = logits.argmax(dim=-1)
        return (None if md.all_greedy else sampling_probs(logits, md)), greedy


def apply_penalties(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Repetition, then frequency, then presence penalty, on the rows that have one.

    Repetition (HF/vLLM): tokens seen in the prompt or the output get ``logit / rp`` when the
    logit is positive, ``logit * rp`` otherwise. Frequency: ``logit -= f * count_in_output``.
    Presence: ``logit -= p * (count_in_output > 0)``.
    """
    rows = md.penalty_rows
    sub = logits[rows]
    counts = md.output_token_counts
    if md.repetition_penalties is not None:
        rp = md.repetition_penalties[:, None]
        seen = md.prompt_token_mask | (counts > 0)
        sub = torch.where(seen, torch.where(sub > 0, sub / rp, sub * rp), sub)
    if md.frequency_penalties is not None:
        sub -= md.frequency_penalties[:, None] * counts
    if md.presence_penalties is not None:
        sub -= md.presence_penalties[:, None] * (counts > 0)
    logits[rows] = sub
    return logits


def sample(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Greedy rows: argmax. Random rows: temperature, min-p, top-k, top-p, exponential race."""
    if md.all_greedy:
        return logits.argmax(dim=-1)
    greedy = None if md.all_random else logits.argmax(dim=-1)
    probs = sampling_probs(logits, md)
    # Exponential(1) noise is -log(U); drawing U is several times faster on CPU than
    # exponential_(). argmax(p / -log U) == argmin(p / log U): one pass less. U is clamped
    # above 0 so log U is finite and a kept token scores < 0, below every excluded one (0).
    noise = torch.rand_like(probs)
    for row, gen in md.generators.items():
        noise[row].uniform_(generator=gen)
    noise.clamp_(min=torch.finfo(noise.dtype).tiny).log_()
    sampled = probs.div_(noise).argmin(dim=-1)
    if greedy is not None:
        sampled = torch.where(md.is_greedy, greedy, sampled)
    return sampled


def sampling_probs(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """The distribution random rows draw from: temperature, min-p, top-k, top-p, softmax
    (``logits`` is modified in place). Greedy rows get a distribution nobody reads."""
    if md.temperature is not None:
        logits = logits.div_(md.temperature[:, None])
    if md.min_p is not None:
        logits = apply_min_p(logits, md.min_p)
    if md.top_k is not None or md.top_p is not None:
        logits = apply_top_k_top_p(logits, md.top_k, md.top_p, md.max_top_k, md.top_p_needs_sort)
    return logits.softmax(dim=-1)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's top probability."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
    return logits.masked_fill_(probs < threshold, _NEG_INF)


def apply_top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    max_top_k: int,
    needs_sort: bool,
) -> torch.Tensor:
    """Keep each row's top-k tokens, then, renormalised, the smallest set whose probability
    reaches top-p (the top token always stays). Tokens tied with the last kept one stay too.

    Both cuts are "keep the logits >= a per-row threshold", found on the row's values sorted
    in descending order and applied with one masked fill. When every top-p row also has a
    top-k, the nucleus lies inside ``topk(max_top_k)``, so the full sort is avoided.
    ``top_k`` uses ``vocab`` for "off".
    """
    vocab = logits.shape[-1]
    if needs_sort:
        candidates = logits.sort(dim=-1, descending=True).values
    else:
        candidates = logits.topk(max_top_k, dim=-1).values
    if top_k is not None:
        threshold = candidates.gather(1, (top_k.clamp(max=candidates.shape[1]) - 1)[:, None])
        threshold.masked_fill_(top_k[:, None] >= vocab, _NEG_INF)
        candidates = candidates.masked_fill(candidates < threshold, _NEG_INF)
    else:
        threshold = torch.full_like(candidates[:, :1], _NEG_INF)
    if top_p is not None:
        ascending = candidates.flip(dims=(1,))
        cum_probs = ascending.softmax(dim=-1).cumsum(dim=-1)
        # cum_probs[j]: mass of token j and all below it. At most 1 - top_p means the tokens
        # above j already reach top_p, so j is not needed. The drops form a prefix.
        drop = cum_probs <= 1 - top_p[:, None]
        drop[:, -1] = False
        p_threshold = ascending.gather(1, drop.sum(dim=-1, keepdim=True))
        p_threshold.masked_fill_(top_p[:, None] >= 1.0, _NEG_INF)
        threshold = torch.maximum(threshold, p_threshold)
    return logits.masked_fill_(logits < threshold, _NEG_INF)


def gather_logprobs(
    logprobs: torch.Tensor, num_logprobs: int, token_ids: torch.Tensor
) -> LogprobsTensors:
    """Column 0: ``token_ids``' logprobs and ranks; columns 1..num_logprobs: the top-k."""
    token_ids = token_ids.long()[:, None]
    token_logprobs = logprobs.gather(1, token_ids)
    ranks = (logprobs > token_logprobs).sum(dim=-1) + 1
    if num_logprobs > 0:
        top_logprobs, top_ids = logprobs.topk(num_logprobs, dim=-1)
        token_ids = torch.cat([token_ids, top_ids], dim=1)
        token_logprobs = torch.cat([token_logprobs, top_logprobs], dim=1)
    return LogprobsTensors(token_ids, token_logprobs, ranks)


def compute_prompt_logprobs(
    logits: torch.Tensor, next_token_ids: torch.Tensor, k: int
) -> LogprobsTensors:
    """Prompt logprobs: row j scores ``next_token_ids[j]`` (the prompt token at j+1) under
    ``logits[j]``, with the top-``k`` candidates."""
    return gather_logprobs(torch.log_softmax(logits.to(torch.float32), dim=-1), k, next_token_ids)
