"""Earliest deadline first, on the targets requests give in their ``SchedulingHints``.

A request's targets are the ones its hints give; a request that gives neither gets
``default_ttft_target_s``, and every request without a latency target gets
``default_latency_target_s`` (None: no latency target). The deadline it is ordered by:

- before its first token: ``arrival + ttft target``, or ``arrival + latency target`` when it
  has only a latency target;
- after its first token (a preempted request): ``arrival + latency target``, or its TTFT
  deadline when it has no latency target.

Both are fixed while a request waits (its first token cannot arrive then), so the queue is a
heap of static keys. With ``demote_missed`` a second heap holds requests whose every deadline
has already passed: they are served only when no waiting request can still make its
deadline. Under overload that keeps the requests that can be on time on time instead of
letting a backlog of late ones make everyone late, at the price of the late ones: they wait
until the load drops (a preempted request past its latency deadline resumes last; one that
streams with no latency target has no deadline left to miss and is never demoted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from pydantic import Field

from llmserve.config import SchedulerConfig
from llmserve.request import Request, RequestStatus
from llmserve.scheduler.policy import (
    PolicyMetric,
    PolicyOptions,
    SchedulingContext,
    SchedulingPolicy,
    StepFeedback,
)
from llmserve_schedulers.request_heap import RequestHeap

TARGETS = ("ttft", "latency")


class DeadlinePolicy(SchedulingPolicy):
    """Earliest deadline first; the running request with the latest deadline (the most slack)
    is preempted. Counts targets met and missed as requests finish."""

    name = "deadline"

    class Options(PolicyOptions):
        #: 1 s to the first token: an interactive chat budget (a model's prefill of a few
        #: thousand tokens plus queueing), for requests that name no target.
        default_ttft_target_s: float = Field(1.0, gt=0)
        #: Arrival-to-finish target for requests without one; None: they have none.
        default_latency_target_s: float | None = Field(None, gt=0)
        #: Serve requests whose deadlines all passed after those that can still make theirs.
        demote_missed: bool = True

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self._default_ttft = self.options.default_ttft_target_s
        self._default_latency = self.options.default_latency_target_s
        self._demote_missed = self.options.demote_missed
        #: Requests that can still make a deadline (or all of them without demote_missed).
        self._live = RequestHeap()
        #: Requests demoted at a peek after their last deadline passed.
        self._late = RequestHeap()
        self._met = dict.fromkeys(TARGETS, 0)
        self._missed = dict.fromkeys(TARGETS, 0)

    def _targets(self, request: Request) -> tuple[float | None, float | None]:
        """(TTFT target, latency target) in seconds from arrival; at least one is set."""
        hints = request.hints
        ttft = hints.ttft_target_s
        if ttft is None and hints.latency_target_s is None:
            ttft = self._default_ttft
        latency = hints.latency_target_s
        return ttft, (self._default_latency if latency is None else latency)

    def _deadlines(self, request: Request) -> tuple[float, float]:
        """(the deadline the request is ordered by, when the last of its deadlines passes)."""
        ttft, latency = self._targets(request)
        arrival = request.arrival_time
        ttft_deadline = None if ttft is None else arrival + ttft
        latency_deadline = None if latency is None else arrival + latency
        if request.first_token_time is not None:
            if latency_deadline is None:
                # Its only target is behind it, met or not: nothing left to miss, so it is
                # never demoted, and its early TTFT deadline resumes it soon.
                return ttft_deadline, math.inf
            return latency_deadline, latency_deadline
        if ttft_deadline is None:
            return latency_deadline, latency_deadline
        if latency_deadline is None:
            return ttft_deadline, ttft_deadline
        return ttft_deadline, max(ttft_deadline, latency_deadline)

    def add(self, request: Request) -> None:
        self._live.push(self._deadlines(request)[0], request)

    # A preempted request's deadline is recomputed: after its first token it is the latency one.
    prepend = add

    def _demote(self, now: float) -> None:
        """Move requests past their last deadline from the top of the live heap to the late one.

        Only the top needs checking: a request's ordering deadline is never after its last
        one, so every late request deeper in the live heap is behind the live top anyway and
        is demoted when it reaches the top.
        """
        live = self._live
        while live:
            deadline, last = self._deadlines(live.peek())
            if last >= now:
                return
            self._late.push(deadline, live.pop())

    def peek(self, ctx: SchedulingContext) -> Request:
        if self._demote_missed:
            self._demote(ctx.now)
        return self._live.peek() if self._live else self._late.peek()

    def pop(self, ctx: SchedulingContext) -> Request:
        self.peek(ctx)
        return self._live.pop() if self._live else self._late.pop()

    def remove(self, requests: Iterable[Request]) -> None:
        drop = {id(r) for r in requests}
        if drop:
            self._live.remove(drop)
            self._late.remove(drop)

    def __len__(self) -> int:
        return len(self._live) + len(self._late)

    def __iter__(self) -> Iterator[Request]:
        yield from self._live
        yield from self._late

    def choose_victim(self, running: list[Request], ctx: SchedulingContext) -> Request:
        # max() keeps the first of equal keys; scan from the back so ties pick the latest admitted.
        return max(reversed(running), key=lambda r: self._deadlines(r)[0])

    def on_step(self, feedback: StepFeedback) -> None:
        """Score each finished request against its targets. An aborted request met its TTFT
        target only if its first token came in time, and never meets a latency target."""
        for request in feedback.finished:
            ttft, latency = self._targets(request)
            arrival = request.arrival_time
            if ttft is not None:
                first = request.first_token_time
                self._count("ttft", first is not None and first - arrival <= ttft)
            if latency is not None:
                completed = request.status is not RequestStatus.FINISHED_ABORTED
                self._count("latency", completed and feedback.now - arrival <= latency)

    def _count(self, target: str, is_met: bool) -> None:
        counts = self._met if is_met else self._missed
        counts[target] += 1

    def targets_met(self) -> dict[str, int]:
        """Finished requests that met each target ("ttft", "latency"), for tests and benchmarks."""
        return dict(self._met)

    def targets_missed(self) -> dict[str, int]:
        """Finished requests that missed each target."""
        return dict(self._missed)

    def metrics(self) -> list[PolicyMetric]:
        return [
            *(PolicyMetric("scheduler_deadline_targets_met",
                           "Finished requests that met their target (ttft or latency).",
                           "counter", float(self._met[t]), (("target", t),)) for t in TARGETS),
            *(PolicyMetric("scheduler_deadline_targets_missed",
                           "Finished requests that missed their target (ttft or latency); "
                           "aborted requests count as missed unless already met.",
                           "counter", float(self._missed[t]), (("target", t),))
              for t in TARGETS),
        ]
