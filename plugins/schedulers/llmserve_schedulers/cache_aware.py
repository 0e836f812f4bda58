"""Admit the waiting request with the longest cached prefix, as SGLang's longest-prefix-match.

Requests that share a prefix with what the prefix cache holds now skip that prefill; serving
them before their group's blocks are evicted turns the same cache into more hits when groups
of requests with shared prompts arrive interleaved.

Two bounds keep it cheap and fair. Only the first ``window`` waiting requests in arrival order
are scored, and each score (``SchedulingContext.cached_prefix_tokens``, a hash lookup per
cached block) is computed once per step, however many ``peek``/``pop`` calls the step makes.
The lookup reads the live cache, so blocks cached by one admission within the step are seen
by the next step's scores, not by the rest of this step's: a step's admissions are chosen
from the scores at its first ``peek``. And a request passed
over by a younger one ``max_passes`` times is due: due requests are admitted before any
scoring, oldest first, so no request waits behind more than ``max_passes`` younger admissions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice

from pydantic import Field

from llmserve.config import SchedulerConfig
from llmserve.request import Request
from llmserve.scheduler.policy import PolicyOptions, SchedulingContext, SchedulingPolicy


class CacheAwarePolicy(SchedulingPolicy):
    """Longest cached prefix first within a window, ties and due requests in arrival order;
    the most recently admitted running request is preempted."""

    name = "cache-aware"

    class Options(PolicyOptions):
        #: Waiting requests scored per step, oldest first. 64 keeps scoring to at most 64
        #: lookups a step, and is more than a step admits at common ``max_num_seqs``.
        window: int = Field(64, ge=1)
        #: Younger admissions a request may be passed over for before it is due; 0 is FCFS.
        #: 8 lets a group of 8 requests sharing a prefix run back to back past an older one.
        max_passes: int = Field(8, ge=0)

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self._window = self.options.window
        self._max_passes = self.options.max_passes
        #: Arrival order, preempted requests at the front.
        self._queue: deque[Request] = deque()
        #: Requests passed over ``max_passes`` times, oldest first.
        self._due: deque[Request] = deque()
        #: Request id -> times passed over, for queued requests passed over at least once.
        self._passes: dict[str, int] = {}
        self._scored_ctx: SchedulingContext | None = None
        #: Request id -> cached prefix tokens, valid for ``_scored_ctx``'s step.
        self._scores: dict[str, int] = {}

    def add(self, request: Request) -> None:
        self._queue.append(request)

    def prepend(self, request: Request) -> None:
        # Victims are taken from the back of the running list, so prepending them one by one
        # restores their original order at the front of the queue.
        self._queue.appendleft(request)

    def _choose(self, ctx: SchedulingContext) -> int:
        """Index in the queue of the best-scored request of the window (0 on an empty queue)."""
        if self._max_passes == 0:
            return 0
        if ctx is not self._scored_ctx:
            self._scored_ctx = ctx
            self._scores = {}
        scores = self._scores
        best, best_score = 0, -1
        for i, request in enumerate(islice(self._queue, self._window)):
            score = scores.get(request.request_id)
            if score is None:
                score = scores[request.request_id] = ctx.cached_prefix_tokens(request)
            if score > best_score:  # strict: ties keep the oldest
                best, best_score = i, score
        return best

    def peek(self, ctx: SchedulingContext) -> Request:
        if self._due:
            return self._due[0]
        return self._queue[self._choose(ctx)]

    def pop(self, ctx: SchedulingContext) -> Request:
        if self._due:
            request = self._due.popleft()
        else:
            i = self._choose(ctx)
            request = self._queue[i]
            del self._queue[i]
            if i:
                self._pass_over(i)
        self._passes.pop(request.request_id, None)
        return request

    def _pass_over(self, num_older: int) -> None:
        """Count a pass for each of the first ``num_older`` queued requests, which are older
        than the one just admitted, and move those that reached ``max_passes`` to due."""
        passes = self._passes
        queue = self._queue
        older = [queue.popleft() for _ in range(num_older)]
        kept = []
        for request in older:
            rid = request.request_id
            count = passes[rid] = passes.get(rid, 0) + 1
            if count >= self._max_passes:
                self._due.append(request)
            else:
                kept.append(request)
        queue.extendleft(reversed(kept))

    def remove(self, requests: Iterable[Request]) -> None:
        drop = {id(r): r.request_id for r in requests}
        if not drop:
            return
        for rid in drop.values():
            self._passes.pop(rid, None)
        for queue in (self._queue, self._due):
            kept = [r for r in queue if id(r) not in drop]
            if len(kept) != len(queue):
                queue.clear()
                queue.extend(kept)

    def __len__(self) -> int:
        return len(self._queue) + len(self._due)

    def __iter__(self) -> Iterator[Request]:
        yield from self._due
        yield from self._queue

    def choose_victim(self, running: list[Request], ctx: SchedulingContext) -> Request:
        return running[-1]
