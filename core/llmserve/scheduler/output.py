"""The scheduler -> model runner contract, and the runner's answer.

The runner keeps per-request state between steps (token ids, block table rows), so a request
is described in full once (``NewRequestData``) and afterwards only by what changed
(``CachedRequestData``). That keeps per-step host work proportional to the requests scheduled,
not to the tokens they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from llmserve.sampling_params import SamplingParams

#: A scheduled draft token whose value the runner's proposer makes on the device
#: (asynchronous scheduling with speculation).
DRAFT_PLACEHOLDER = -2


@dataclass
class NewRequestData:
    """A request the runner has not seen, or one resumed after preemption (state rebuilt)."""

    req_id: str
    #: Prompt + output tokens so far (a resumed request recomputes its outputs too).
    token_ids: list[int]
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    #: Token ids that end the request (EOS unless ignore_eos, plus stop_token_ids); the
    #: sampler masks them until ``min_tokens`` is reached.
    stop_token_ids: frozenset[int] = frozenset()
    #: The request's slot in every per-request-state layer (None without such layers).
    state_slot: Optional[int] = None


@dataclass
class CachedRequestData:
    """Requests the runner already holds, in the order scheduled."""

    req_ids: list[str] = field(default_factory=list)
    #: Blocks appended to each request's block table this step (often empty).
    new_block_ids: list[list[int]] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    #: req_id -> tokens to compute this step.
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    #: Requests finished or aborted since the last step: the runner drops their state.
    finished_req_ids: set[str]
    #: Requests preempted this step: the runner drops their state; they come back as new.
    preempted_req_ids: set[str] = field(default_factory=set)
    #: Requests that sample a constrained token this step, in scheduling order: the runner
    #: holds their sampling until it gets the step's ``GrammarBitmask`` (rows in this order).
    grammar_req_ids: list[str] = field(default_factory=list)
    #: (source row, destination row) copies in every state layer's tensors: snapshots
    #: restored into admitted requests' slots before the forward, and slots saved as
    #: snapshots after it (prefix caching with state layers; see kv_cache.state_snapshots).
    state_restores: list[tuple[int, int]] = field(default_factory=list)
    state_saves: list[tuple[int, int]] = field(default_factory=list)
    #: req_id -> draft tokens scheduled after the request's last token (speculative
    #: decoding): they are among its ``num_scheduled_tokens``, the target scores them in
    #: this step's forward, and the runner returns the accepted ones plus one more token.
    #: With asynchronous scheduling they are ``DRAFT_PLACEHOLDER``s.
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class GrammarBitmask:
    """The structured-output token mask of one step, filled on the host.

    Row ``i`` of ``bitmask`` (numpy int32, ``[len(req_ids), ceil(vocab_size / 32)]``) belongs
    to ``req_ids[i]``, which is ``SchedulerOutput.grammar_req_ids``: bit ``j`` of word ``w``
    set means token ``32 * w + j`` is allowed.
    """

    req_ids: list[str]
    bitmask: Any


@dataclass
class LogprobsLists:
    """Top-k logprobs of sampled positions, row i for the i-th sampled token.

    Column 0 is the token that was sampled (or the prompt token that follows), columns 1.. are
    the top-k candidates in rank order.
    """

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    #: Rank of the column-0 token among all candidates (1 = most likely).
    ranks: list[int]


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]
    #: One list per request in ``req_ids``: tokens sampled this step (empty for a prefill
    #: chunk that did not reach the end of the prompt).
    sampled_token_ids: list[list[int]]
    #: Per request in ``req_ids`` (None when not asked for / nothing sampled).
    logprobs: list[Optional[LogprobsLists]]
    #: req_id -> prompt logprobs for the prompt positions computed this step.
    prompt_logprobs: dict[str, LogprobsLists] = field(default_factory=dict)
    #: Per request in ``req_ids``: drafts proposed for its next step (empty: none);
    #: empty altogether without speculative decoding.
    spec_token_ids: list[list[int]] = field(default_factory=list)
    #: Per request in ``req_ids``: the drafts its verification scored, where that can be
    #: fewer than were scheduled (a host proposer under asynchronous scheduling finding
    #: fewer); empty: as scheduled. Added in plugin API 1.6.
    num_draft_tokens: list[int] = field(default_factory=list)
