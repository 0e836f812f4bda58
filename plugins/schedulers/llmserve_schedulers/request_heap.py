"""A min-heap of requests under static keys, shared by the policies that order by a number.

Keys must not change while a request waits: the policies that use it (shortest job first,
earliest deadline first) fold anything time-dependent into a key fixed at ``push``, so the
heap stays a plain ``heapq`` with O(log n) push and pop.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from llmserve.request import Request


class RequestHeap:
    """Requests by ascending key; equal keys come out in push order."""

    def __init__(self) -> None:
        # (key, tie-breaker, request): the counter keeps equal keys FIFO and stops heapq from
        # ever comparing two Requests.
        self._heap: list[tuple[float, int, Request]] = []
        self._counter = itertools.count()

    def push(self, key: float, request: Request) -> None:
        heapq.heappush(self._heap, (key, next(self._counter), request))

    def peek(self) -> Request:
        """The request with the smallest key (IndexError when empty)."""
        return self._heap[0][2]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def remove(self, drop: set[int]) -> None:
        """Drop the requests whose ``id()`` is in ``drop``; O(n), as aborts are rare."""
        kept = [e for e in self._heap if id(e[2]) not in drop]
        if len(kept) != len(self._heap):
            heapq.heapify(kept)
            self._heap = kept

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (e[2] for e in self._heap)

