"""Scheduling policies: who waits in front, and whom to preempt when KV blocks run out.

A policy is a strategy object the ``Scheduler`` consults; it owns the waiting queue so the
queue's data structure can follow the policy (a deque for FCFS, a heap for priorities). New
policies subclass ``SchedulingPolicy`` and register through the scheduling-policy hook under
their ``name``; the scheduler's loop never branches on which policy it runs.

A policy is constructed with the ``SchedulerConfig``, whose ``policy_config`` holds the options
the user gave (``--scheduling-policy-config``), parsed into ``self.options`` through the
policy's ``Options`` model. Its decisions (the next request to admit, the request to preempt)
receive a ``SchedulingContext``: the state of the step they are made in, so a policy can weigh
KV pressure, queue lengths or cached prefixes without reaching into the scheduler or the KV
cache manager. After each step it may receive a ``StepFeedback`` (``on_step``) and it may
report metrics (``metrics``).

Invariants (the conformance kit, ``llmserve.plugin_testing.scheduling.check_scheduling_policy``, checks
them): the scheduler owns KV blocks, the token and sequence budgets, request status and every
field of a ``Request``; a policy only orders its own queue, names victims among the running
requests it is shown, and keeps its own bookkeeping. It never mutates a request, never keeps a
request that left its queue except as bookkeeping keyed by id, and never raises for a request
it was given.

The interface is versioned with the plugin API (``PLUGIN_API_VERSION``): ``add`` .. ``choose_victim``
since 1.0; ``Options``, ``on_step``, ``metrics``, ``SchedulingContext.cached_prefix_tokens``
and ``now`` on the scheduler's clock since 1.2. Everything added later has a default, so a
1.0 policy keeps working.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from llmserve.config import SchedulerConfig
from llmserve.request import Request


@dataclass(frozen=True)
class SchedulingContext:
    """The scheduler's state at the start of one ``schedule()`` call, built once per call.

    A snapshot: the tokens given, blocks allocated and requests preempted during the step are
    not reflected in it. Frozen, so a policy cannot change what the scheduler decides from.
    """

    config: SchedulerConfig
    #: Fraction of KV blocks held by requests, 0.0 to 1.0 (evictable cached blocks are free).
    kv_cache_usage: float
    num_free_blocks: int
    #: Tokens this step may still schedule (the whole ``max_num_batched_tokens`` at the start).
    num_budget_tokens: int
    num_running: int
    num_waiting: int
    #: The scheduler's clock when the step started (``time.monotonic()`` unless the scheduler
    #: was given another clock); request arrival and first-token times use the same clock.
    now: float
    _cached_prefix: Callable[[Request], int] = field(default=lambda request: 0, repr=False)

    def cached_prefix_tokens(self, request: Request) -> int:
        """Tokens of ``request`` the prefix cache holds now: what admitting it would skip.

        A read-only lookup (no statistics, no LRU touch) costing one hash lookup per cached
        block plus one; 0 without prefix caching.
        """
        return self._cached_prefix(request)


@dataclass(frozen=True)
class StepFeedback:
    """What one step did, given to ``SchedulingPolicy.on_step`` once the step's output has been
    applied (``update_from_output``), and when requests are finished from outside the step
    (``finish_requests``: aborts), so that every finish reaches the policy without waiting for
    another step.

    Built from the scheduler's own step structures (nothing is copied per request), so reading
    it costs what the policy chooses to read. Under asynchronous scheduling the next step has
    already been scheduled when a step's feedback arrives.
    """

    #: Request id -> tokens the step computed for it (prefill chunk, decode, recompute);
    #: empty for a feedback that only reports aborts.
    num_scheduled_tokens: Mapping[str, int]
    #: Ids preempted while scheduling the step (they are back in the policy's queue).
    preempted: Collection[str]
    #: Requests that finished since the previous feedback, with their final status (stopped,
    #: length-capped or aborted, aborts of waiting requests included); the policy may read
    #: them but must not keep them.
    finished: Sequence[Request]
    #: The scheduler's clock when the feedback was built (a finish's time).
    now: float


@dataclass(frozen=True)
class PolicyMetric:
    """One sample a policy reports; the server exports it as ``llmserve:<name>``.

    Counters are cumulative (the server exports increments); gauges are the current value.
    Every sample of one name has the same label names.
    """

    name: str
    documentation: str
    kind: Literal["counter", "gauge"]
    value: float
    labels: tuple[tuple[str, str], ...] = ()


class PolicyOptions(BaseModel):
    """Base of a policy's ``Options``: unknown options are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_policy_options(policy_cls: type["SchedulingPolicy"], raw: Mapping[str, Any] | None
                         ) -> PolicyOptions | None:
    """``raw`` (``--scheduling-policy-config``) validated by ``policy_cls.Options``.

    Raises ``ValueError`` naming the bad option and what the policy accepts.
    """
    raw = dict(raw or {})
    options_cls = policy_cls.Options
    if options_cls is None:
        if raw:
            raise ValueError(f"scheduling_policy_config: policy {policy_cls.name!r} takes no "
                             f"options, got {sorted(raw)}")
        return None
    allowed = sorted(options_cls.model_fields)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValueError(f"scheduling_policy_config: unknown option(s) {unknown} for policy "
                         f"{policy_cls.name!r}; its options are {allowed}")
    try:
        return options_cls.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors())
        raise ValueError(f"scheduling_policy_config for policy {policy_cls.name!r}: "
                         f"{problems}") from None


class SchedulingPolicy(ABC):
    """Waiting-queue order and victim choice.

    Subclasses implement every abstract method and, if they override ``__init__``, call
    ``super().__init__(config)``.
    """

    #: Name the policy is registered and configured under (``SchedulerConfig.policy``).
    name: str = ""
    #: The policy's options (a ``PolicyOptions`` subclass), or None for a policy without any.
    Options: ClassVar[Optional[type[PolicyOptions]]] = None

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        #: ``config.policy_config`` parsed by ``Options`` (None when the policy has none).
        self.options = parse_policy_options(type(self), config.policy_config)

    @abstractmethod
    def add(self, request: Request) -> None:
        """Queue a newly arrived request."""

    @abstractmethod
    def prepend(self, request: Request) -> None:
        """Queue a preempted request so it resumes as soon as its order allows."""

    @abstractmethod
    def peek(self, ctx: SchedulingContext) -> Request:
        """The request to admit next (IndexError when empty)."""

    @abstractmethod
    def pop(self, ctx: SchedulingContext) -> Request:
        """Remove and return ``peek(ctx)``."""

    @abstractmethod
    def remove(self, requests: Iterable[Request]) -> None:
        """Drop these requests from the queue (aborts); ones not queued are ignored."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of queued requests."""

    @abstractmethod
    def __iter__(self) -> Iterator[Request]:
        """Queued requests, in no guaranteed order."""

    @abstractmethod
    def choose_victim(self, running: list[Request], ctx: SchedulingContext) -> Request:
        """The request to preempt when a running request cannot get KV blocks.

        ``running`` is the scheduler's running list in scheduling order (non-empty; it
        includes the request that needs the blocks). Must return one of its elements.
        """

    def on_step(self, feedback: StepFeedback) -> None:
        """Learn what a step did: called once per step that scheduled, preempted or finished
        anything, after its output is applied, and after aborts. A policy that does not
        override it costs the step nothing (the scheduler does not build the feedback)."""

    def metrics(self) -> list[PolicyMetric]:
        """Samples for ``/metrics`` (per-tenant counters, targets met...). Called when the
        engine reports its statistics, not every step."""
        return []


class FCFSPolicy(SchedulingPolicy):
    """First come, first served; the most recently admitted running request is preempted."""

    name = "fcfs"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self._queue: deque[Request] = deque()

    def add(self, request: Request) -> None:
        self._queue.append(request)

    def prepend(self, request: Request) -> None:
        # Victims are taken from the back of the running list, so prepending them one by one
        # restores their original order at the front of the queue.
        self._queue.appendleft(request)

    def peek(self, ctx: SchedulingContext) -> Request:
        return self._queue[0]

    def pop(self, ctx: SchedulingContext) -> Request:
        return self._queue.popleft()

    def remove(self, requests: Iterable[Request]) -> None:
        drop = {id(r) for r in requests}
        if drop:
            self._queue = deque(r for r in self._queue if id(r) not in drop)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)

    def choose_victim(self, running: list[Request], ctx: SchedulingContext) -> Request:
        return running[-1]


class PriorityPolicy(SchedulingPolicy):
    """Lowest ``(priority, arrival_time)`` first, as in vLLM; the highest one is preempted."""

    name = "priority"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        # (priority, arrival_time, tie-breaker, request): the counter keeps equal keys FIFO
        # and stops heapq from ever comparing two Requests.
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()

    def add(self, request: Request) -> None:
        heapq.heappush(self._heap,
                       (request.priority, request.arrival_time, next(self._counter), request))

    # A preempted request keeps its (priority, arrival_time), which already puts it ahead of
    # everything that arrived after it at its priority.
    prepend = add

    def peek(self, ctx: SchedulingContext) -> Request:
        return self._heap[0][3]

    def pop(self, ctx: SchedulingContext) -> Request:
        return heapq.heappop(self._heap)[3]

    def remove(self, requests: Iterable[Request]) -> None:
        drop = {id(r) for r in requests}
        if drop:
            self._heap = [e for e in self._heap if id(e[3]) not in drop]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (e[3] for e in self._heap)

    def choose_victim(self, running: list[Request], ctx: SchedulingContext) -> Request:
        # max() keeps the first of equal keys; scan from the back so ties pick the latest admitted.
        return max(reversed(running), key=lambda r: (r.priority, r.arrival_time))


BUILTIN_POLICIES: dict[str, type[SchedulingPolicy]] = {
    "fcfs": FCFSPolicy,
    "priority": PriorityPolicy,
}
