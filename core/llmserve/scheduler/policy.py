"""Scheduling policies: who waits in front, and whom to preempt when KV blocks run out.

A policy is a strategy object the ``Scheduler`` consults; it owns the waiting queue so the
queue's data structure can follow the policy (a deque for FCFS, a heap for priorities). New
policies subclass ``SchedulingPolicy`` and register through the scheduling-policy hook under
their ``name``; the scheduler's loop never branches on which policy it runs.

A policy is constructed with the ``SchedulerConfig`` and its decisions (the next request to
admit, the request to preempt) receive a ``SchedulingContext``: the state of the step they are
made in, so a policy can weigh KV pressure or queue lengths without reaching into the
scheduler or the KV cache manager.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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
    #: ``time.monotonic()`` when the step started; request arrival times use the same clock.
    now: float


class SchedulingPolicy(ABC):
    """Waiting-queue order and victim choice.

    Subclasses implement every abstract method and, if they override ``__init__``, call
    ``super().__init__(config)``.
    """

    #: Name the policy is registered and configured under (``SchedulerConfig.policy``).
    name: str = ""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

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
