"""Cache-aware admission: more prefix-cache hits than FCFS on interleaved groups of shared
prompts, a bounded number of passes over any request, and bounded scoring work."""

from __future__ import annotations

import pytest

from llmserve.plugin_testing.scheduling import run_to_completion
from llmserve.scheduler.policy import FCFSPolicy
from llmserve_schedulers.cache_aware import CacheAwarePolicy
from scheduler_sim import make_config, make_context, make_request, make_scheduler

GROUPS = 4
PER_GROUP = 8
PREFIX = 32  # 8 blocks of 4 tokens


def _shared_prefix_hit_rate(policy_cls: type) -> float:
    """Hit rate on four groups of eight requests, each group sharing a 32-token prefix,
    arriving interleaved (g0, g1, g2, g3, g0, ...), on a cache of 24 blocks: the prefixes
    alone need 32."""
    sched = make_scheduler(policy_cls, num_blocks=24, max_num_seqs=2)
    for i in range(PER_GROUP):
        for g in range(GROUPS):
            base = 100_000 * (g + 1)
            suffix = [10 + 8 * i + g + k for k in range(4)]
            sched.add_request(make_request(f"g{g}.{i}", max_tokens=2,
                                           arrival=0.001 * (GROUPS * i + g),
                                           prompt=list(range(base, base + PREFIX)) + suffix))
    finished = run_to_completion(sched)
    assert len(finished) == GROUPS * PER_GROUP
    return sched.kv_cache_manager.prefix_cache_stats.hit_rate


def test_longest_prefix_first_raises_the_hit_rate():
    fcfs = _shared_prefix_hit_rate(FCFSPolicy)
    cache_aware = _shared_prefix_hit_rate(CacheAwarePolicy)
    # FCFS evicts each group's prefix before the group comes round again; cache-aware runs a
    # group while its prefix is cached: 7 of 8 requests hit 32 of 36 prompt tokens at best.
    assert fcfs < 0.1
    assert cache_aware > 0.6


def _popped(policy: CacheAwarePolicy, scores: dict[str, int], steps: int) -> list[str]:
    """Pop once per step (a fresh context each), with these cached-prefix scores."""
    return [policy.pop(make_context(now=float(k), cached=scores)).request_id
            for k in range(steps)]


@pytest.mark.parametrize("max_passes", [0, 1, 3])
def test_a_request_is_passed_over_at_most_max_passes_times(max_passes):
    policy = CacheAwarePolicy(make_config(max_passes=max_passes))
    policy.add(make_request("old"))
    for i in range(6):
        policy.add(make_request(f"y{i}", arrival=1.0 + i))
    scores = {f"y{i}": 16 for i in range(6)}  # every younger request has a cached prefix
    order = _popped(policy, scores, 7)
    assert order.index("old") == max_passes
    assert [rid for rid in order if rid != "old"] == [f"y{i}" for i in range(6)]


def test_due_requests_go_first_oldest_first():
    policy = CacheAwarePolicy(make_config(max_passes=2))
    for rid in ("a", "b", "hit1", "hit2", "hit3"):
        policy.add(make_request(rid))
    order = _popped(policy, {"hit1": 8, "hit2": 8, "hit3": 8}, 5)
    assert order == ["hit1", "hit2", "a", "b", "hit3"]


def test_ties_and_unscored_requests_are_fifo():
    policy = CacheAwarePolicy(make_config())
    for rid in ("a", "b", "c"):
        policy.add(make_request(rid))
    assert _popped(policy, {}, 3) == ["a", "b", "c"]


def test_only_the_window_is_scored_once_per_step():
    policy = CacheAwarePolicy(make_config(window=8))
    for i in range(20):
        policy.add(make_request(f"r{i}"))
    calls: list[str] = []

    def lookup(request) -> int:
        calls.append(request.request_id)
        return 16 if request.request_id == "r15" else 0  # outside the window

    ctx = make_context(lookup=lookup)
    admitted = [policy.peek(ctx).request_id, policy.pop(ctx).request_id,
                policy.pop(ctx).request_id]
    assert admitted == ["r0", "r0", "r1"]
    assert sorted(calls) == sorted(f"r{i}" for i in range(9))  # r0..r7, then r8 slid in


def test_preempted_requests_go_to_the_front():
    policy = CacheAwarePolicy(make_config())
    policy.add(make_request("waiting"))
    policy.prepend(make_request("victim"))
    assert policy.peek(make_context()).request_id == "victim"
    running = [make_request("first"), make_request("last")]
    assert policy.choose_victim(running, make_context()).request_id == "last"
