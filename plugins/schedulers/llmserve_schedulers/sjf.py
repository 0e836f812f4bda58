"""Shortest expected job first, with aging so that long jobs are not starved.

A job's expected size is what admitting it commits the engine to:
``prompt_weight * num_prompt_tokens + max_tokens``. Its effective key while it waits is
``size - aging_tokens_per_s * (now - arrival_time)``: waiting shrinks the key. Every waiting
request ages at the same rate, so subtracting ``aging_tokens_per_s * now`` changes no
comparison, and the order is that of the static key ``size + aging_tokens_per_s *
arrival_time``, fixed at arrival: a plain heap serves it without re-keying anything per step.

The bound that follows: a request arriving ``dt`` seconds after a job of size ``S`` goes ahead
of it only if its own size is below ``S - aging_tokens_per_s * dt``, so once ``S /
aging_tokens_per_s`` seconds have passed nothing that arrives later overtakes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pydantic import Field

from llmserve.config import SchedulerConfig
from llmserve.request import Request
from llmserve.scheduler.policy import PolicyOptions, SchedulingContext, SchedulingPolicy
from llmserve_schedulers.request_heap import RequestHeap


class ShortestJobFirstPolicy(SchedulingPolicy):
    """Smallest aged expected size first; the running request with the most work left is
    preempted, so a preemption throws away the least progress per unit of work it frees."""

    name = "sjf"

    class Options(PolicyOptions):
        #: 1000 tokens/s: a job waits behind later arrivals at most one second per thousand
        #: tokens of size, so a 4k-token job yields for at most ~4 s and a 32k-token job for
        #: ~32 s, inside common client timeouts, while a 100-token job still goes ahead of a
        #: 4k-token one that arrived up to ~3.9 s before it.
        aging_tokens_per_s: float = Field(1000.0, gt=0)
        #: Weight of a prompt token relative to an output token in the size: prefill tokens
        #: are computed many per step, so below 1 ranks long prompts as cheaper; 0 orders by
        #: max_tokens alone.
        prompt_weight: float = Field(1.0, ge=0)

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self._aging = self.options.aging_tokens_per_s
        self._prompt_weight = self.options.prompt_weight
        self._heap = RequestHeap()

    def _key(self, request: Request) -> float:
        size = self._prompt_weight * request.num_prompt_tokens + request.max_tokens
        return size + self._aging * request.arrival_time

    def _remaining_work(self, request: Request) -> float:
        uncomputed = max(request.num_tokens - request.num_computed_tokens, 0)
        return (self._prompt_weight * uncomputed
                + max(request.max_tokens - request.num_output_tokens, 0))

    def add(self, request: Request) -> None:
        self._heap.push(self._key(request), request)

    # A preempted request keeps its key: it has aged since arrival, which already puts it
    # ahead of every later arrival of its size.
    prepend = add

    def peek(self, ctx: SchedulingContext) -> Request:
        return self._heap.peek()

    def pop(self, ctx: SchedulingContext) -> Request:
        return self._heap.pop()

    def remove(self, requests: Iterable[Request]) -> None:
        drop = {id(r) for r in requests}
        if drop:
            self._heap.remove(drop)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._heap)

    def choose_victim(self, running: list[Request], ctx: SchedulingContext) -> Request:
        # max() keeps the first of equal keys; scan from the back so ties pick the latest admitted.
        return max(reversed(running), key=self._remaining_work)
