"""Data parallelism behind one API server: which engine-core replica serves a request.

``llmserve serve --data-parallel-size N`` starts N identical engine cores (core ``i`` gets
``data_parallel_rank=i``, hence its own devices) behind one ``AsyncEngine``, which tokenizes
each request once and asks ``ReplicaBalancer`` where it goes. All completions of a request
(``n > 1``) go to one replica, so they share its prompt blocks; aborts go to that replica.

The rule, per request:

1. Load is the number of completions this front end sent to a replica that have not
   finished. It is exact at the moment of choosing, unlike the running + waiting counts a
   core reports after its next step, which only break ties.
2. Prefix affinity: the prompt's first ``AFFINITY_BLOCKS`` full KV blocks (fewer if the
   prompt has fewer) hash to a preferred replica, so prompts that share a prefix (a system
   prompt, the earlier turns of a chat) find that prefix in the replica's prefix cache. A
   prompt shorter than one block, or an engine without prefix caching, prefers none.
3. The preferred replica wins unless its load exceeds the least-loaded replica's by more than
   ``max(AFFINITY_SLACK, AFFINITY_SLACK_FRACTION * that load)``: a cache hit saves a
   prefix's prefill, which is not worth queueing behind many more requests than elsewhere.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["AFFINITY_BLOCKS", "AFFINITY_SLACK", "AFFINITY_SLACK_FRACTION", "ReplicaBalancer",
           "merge_replica_stats"]

#: Leading full KV blocks of a prompt that pick its preferred replica.
AFFINITY_BLOCKS = 4
#: In-flight completions the preferred replica may have beyond the least-loaded one's ...
AFFINITY_SLACK = 4
#: ... or this fraction of the least-loaded one's, when that is more.
AFFINITY_SLACK_FRACTION = 0.25


class ReplicaBalancer:
    """Routes requests to ``num_replicas`` engine cores by load and prefix affinity.

    It only counts: ``route`` adds a request's completions to the chosen replica's load,
    ``release`` takes them off when the request finishes or is aborted, and ``report``
    records the counts a core sent. No process or I/O, so it is tested alone.
    """

    def __init__(self, num_replicas: int, block_size: int, *, prefix_affinity: bool = True
                 ) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
        self.num_replicas = num_replicas
        self._block_size = block_size
        self._affinity_tokens = AFFINITY_BLOCKS * block_size if prefix_affinity else 0
        self._in_flight = [0] * num_replicas
        self._reported = [0] * num_replicas

    @property
    def num_in_flight(self) -> list[int]:
        """Unfinished completions routed to each replica."""
        return list(self._in_flight)

    def preferred(self, token_ids: Sequence[int]) -> Optional[int]:
        """The replica the prompt's leading full blocks hash to; None without a full block.

        A tuple of ints hashes the same in every process (only str and bytes hashes are
        salted), so the choice is stable across restarts too.
        """
        full = len(token_ids) // self._block_size * self._block_size
        num_tokens = min(full, self._affinity_tokens)
        if num_tokens == 0:
            return None
        return hash(tuple(token_ids[:num_tokens])) % self.num_replicas

    def route(self, token_ids: Sequence[int], num_completions: int = 1) -> int:
        """Choose the replica of a request and count its completions there."""
        loads, reported = self._in_flight, self._reported
        least = min(range(self.num_replicas), key=lambda i: (loads[i], reported[i]))
        choice = self.preferred(token_ids)
        if choice is None or loads[choice] - loads[least] > max(
                AFFINITY_SLACK, AFFINITY_SLACK_FRACTION * loads[least]):
            choice = least
        loads[choice] += num_completions
        return choice

    def release(self, index: int, num_completions: int = 1) -> None:
        """A request routed to ``index`` finished, failed or was aborted."""
        self._in_flight[index] -= num_completions

    def report(self, index: int, num_scheduled: int) -> None:
        """The running + waiting requests replica ``index`` reported last."""
        self._reported[index] = num_scheduled


def merge_replica_stats(stats: Sequence[dict]) -> dict:
    """One view of several cores' ``stats()``: counts added up, ``kv_cache_usage`` averaged
    (the replicas have equal caches); lists, such as policy samples, are left out."""
    merged: dict = {}
    for replica in stats:
        for key, value in replica.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
    if stats and "kv_cache_usage" in merged:
        merged["kv_cache_usage"] /= len(stats)
    return merged
