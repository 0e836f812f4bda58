"""The engine core's view of one request (one completion: n>1 is fanned out before this)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from llmserve.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    #: Held aside until its structured-output grammar is compiled; not in the queue yet.
    WAITING_FOR_GRAMMAR = 1
    RUNNING = 2
    PREEMPTED = 3
    # Everything from here on is finished.
    FINISHED_STOPPED = 4
    FINISHED_LENGTH_CAPPED = 5
    FINISHED_ABORTED = 6

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> Optional[str]:
        """The OpenAI ``finish_reason`` of a finished status."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(frozen=True)
class SchedulingHints:
    """What a request tells the scheduling policy beyond ``priority``; policies read what they
    use and ignore the rest (the core's own policies read none of it).

    Targets are seconds from arrival; None means the policy's default applies.
    """

    #: Who the request is accounted to (the OpenAI ``user`` field or the ``X-Tenant`` header).
    tenant: Optional[str] = None
    #: Time-to-first-token target.
    ttft_target_s: Optional[float] = None
    #: Arrival-to-finish target.
    latency_target_s: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("ttft_target_s", "latency_target_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


NO_HINTS = SchedulingHints()


@dataclass
class EngineCoreRequest:
    """What a front end submits to the engine core: already tokenized, already validated."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    priority: int = 0
    #: Extra prefix-cache key material (e.g. a cache salt or adapter name); None for plain requests.
    cache_salt: Optional[str] = None
    hints: SchedulingHints = NO_HINTS


class Request:
    """Mutable per-request state owned by the scheduler.

    ``all_token_ids`` is prompt + output; ``num_computed_tokens`` counts how many of them have
    K/V in the cache. Each step the scheduler closes part of the gap between the two.
    """

    __slots__ = (
        "request_id", "prompt_token_ids", "sampling_params", "eos_token_ids", "arrival_time",
        "priority", "cache_salt", "status", "all_token_ids", "num_prompt_tokens",
        "num_computed_tokens", "num_cached_tokens", "block_hashes", "stop_token_ids",
        "max_tokens", "stop_reason", "num_preemptions", "first_scheduled_time", "extra",
        "num_output_placeholders", "grammar", "grammar_future", "hints", "first_token_time",
        "spec_token_ids",
    )

    def __init__(self, req: EngineCoreRequest, max_model_len: int) -> None:
        self.request_id = req.request_id
        self.prompt_token_ids = req.prompt_token_ids
        self.sampling_params = req.sampling_params
        self.eos_token_ids = req.eos_token_ids
        self.arrival_time = req.arrival_time
        self.priority = req.priority
        self.cache_salt = req.cache_salt
        self.hints = req.hints
        self.status = RequestStatus.WAITING
        self.all_token_ids: list[int] = list(req.prompt_token_ids)
        self.num_prompt_tokens = len(req.prompt_token_ids)
        self.num_computed_tokens = 0
        #: Tokens sampled by launched steps whose values have not come back yet (asynchronous
        #: scheduling schedules the next step before they do).
        self.num_output_placeholders = 0
        self.num_cached_tokens = 0
        #: Draft tokens the proposer offered for the next step (speculative decoding).
        self.spec_token_ids: list[int] = []
        #: Prefix-cache hashes of this request's full blocks, filled lazily by the KV manager.
        self.block_hashes: list[Any] = []
        self.stop_token_ids = req.sampling_params.all_stop_token_ids(req.eos_token_ids)
        room = max_model_len - self.num_prompt_tokens
        mt = req.sampling_params.max_tokens
        self.max_tokens = room if mt is None else min(mt, room)
        self.stop_reason: Any = None
        self.num_preemptions = 0
        self.first_scheduled_time: Optional[float] = None
        #: When the scheduler appended the first output token (the scheduler's clock).
        self.first_token_time: Optional[float] = None
        self.extra: dict[str, Any] = {}
        #: The request's place in its structured-output grammar (None when unconstrained);
        #: ``grammar_future`` is the compilation it waits for until then.
        self.grammar: Any = None
        self.grammar_future: Any = None

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens})")


@dataclass
class EngineCoreOutput:
    """What one step produced for one request, sent back to the front end."""

    request_id: str
    new_token_ids: list[int]
    #: Logprobs rows for ``new_token_ids`` (see ``LogprobsLists``), or None.
    new_logprobs: Any = None
    #: Prompt logprobs rows computed this step, or None.
    new_prompt_logprobs: Any = None
    #: "stop", "length" or "abort" once finished, else None.
    finish_reason: Optional[str] = None
    #: The stop token id that ended the request (None for EOS, length and stop strings).
    stop_reason: Any = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
