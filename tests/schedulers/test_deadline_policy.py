"""Earliest deadline first: order, demotion of requests that can no longer make a deadline,
and the targets-met counters on a scripted run."""

from __future__ import annotations

from llmserve.plugin_testing.scheduling import run_to_completion
from llmserve.request import RequestStatus
from llmserve_schedulers.deadline import DeadlinePolicy
from scheduler_sim import make_config, make_context, make_request, make_scheduler


def _drain(policy: DeadlinePolicy, now: float) -> list[str]:
    ctx = make_context(now=now)
    return [policy.pop(ctx).request_id for _ in range(len(policy))]


def _queued(**options) -> DeadlinePolicy:
    policy = DeadlinePolicy(make_config(**options))
    # Deadlines: a 1.0, b 2.0, c 0.5, d 3.0 (latency only), e 1.5 (the default TTFT target).
    policy.add(make_request("a", arrival=0.0, ttft=1.0))
    policy.add(make_request("b", arrival=1.0, ttft=1.0))
    policy.add(make_request("c", arrival=0.3, ttft=0.2))
    policy.add(make_request("d", arrival=0.0, latency=3.0))
    policy.add(make_request("e", arrival=0.5))
    return policy


def test_earliest_deadline_first():
    assert _drain(_queued(), now=0.0) == ["c", "a", "e", "b", "d"]


def test_requests_past_their_deadlines_are_served_after_those_still_on_time():
    # At 1.2, a (1.0) and c (0.5) can no longer make theirs: they go last, in deadline order.
    assert _drain(_queued(), now=1.2) == ["e", "b", "d", "c", "a"]
    assert _drain(_queued(demote_missed=False), now=1.2) == ["c", "a", "e", "b", "d"]


def test_a_request_is_demoted_only_when_every_deadline_passed():
    policy = DeadlinePolicy(make_config())
    policy.add(make_request("ttft-missed", ttft=0.1, latency=5.0))
    policy.add(make_request("later", ttft=2.0))
    # Its TTFT deadline passed, its latency one has not: still on time, and the most urgent.
    assert _drain(policy, now=1.0) == ["ttft-missed", "later"]


def test_a_preempted_request_is_ordered_by_its_latency_deadline():
    policy = DeadlinePolicy(make_config(default_latency_target_s=10.0))
    started = make_request("started", ttft=0.1)
    started.first_token_time = 0.05
    policy.prepend(started)  # deadline 10.0 now that its first token is out
    policy.add(make_request("fresh", ttft=1.0))
    assert _drain(policy, now=0.0) == ["fresh", "started"]


def test_a_streaming_request_with_no_target_left_is_never_demoted():
    policy = DeadlinePolicy(make_config())
    streaming = make_request("streaming", ttft=0.1)
    streaming.first_token_time = 0.05  # its TTFT target is behind it; no latency target
    policy.prepend(streaming)
    policy.add(make_request("fresh", arrival=4.5, ttft=1.0))  # on time until 5.5
    # Long after its TTFT deadline it is not late: it resumes first, by that early deadline.
    assert _drain(policy, now=5.0) == ["streaming", "fresh"]


def test_the_victim_has_the_latest_deadline():
    policy = DeadlinePolicy(make_config())
    running = [make_request("urgent", ttft=0.1), make_request("slack", ttft=5.0),
               make_request("also-slack", ttft=5.0), make_request("middle", ttft=1.0)]
    assert policy.choose_victim(running, make_context()).request_id == "also-slack"


def test_targets_met_and_missed_on_a_scripted_run():
    # One sequence at a time; 4 prompt tokens and 3 output tokens take 3 steps of 0.01 s,
    # the first token coming out of the first.
    sched = make_scheduler(DeadlinePolicy, max_num_seqs=1)
    requests = [
        make_request("r1", 4, 3, ttft=0.015),             # steps 0-2: TTFT 0, met
        make_request("r3", 4, 3, ttft=0.02, latency=0.04),  # steps 3-5: TTFT 0.03, done 0.05
        make_request("r0", 4, 3, ttft=0.05),              # demoted at 0.06: steps 9-11
        make_request("r2", 4, 3, ttft=1.0, latency=0.2),  # steps 6-8: TTFT 0.06, done 0.08
        make_request("gone", 4, 3, ttft=5.0),             # aborted while waiting
    ]
    for request in requests:
        sched.add_request(request)
    sched.finish_requests("gone", RequestStatus.FINISHED_ABORTED)
    order: list[str] = []

    def step(k: int) -> None:
        order.extend(r.request_id for r in sched.running if r.request_id not in order)

    run_to_completion(sched, on_step=step)
    assert order == ["r1", "r3", "r2", "r0"]
    policy = sched.policy
    assert policy.targets_met() == {"ttft": 2, "latency": 1}       # r1, r2; r2
    assert policy.targets_missed() == {"ttft": 3, "latency": 1}    # r3, r0, gone; r3
    samples = {(m.name, dict(m.labels)["target"]): m.value for m in policy.metrics()}
    assert samples == {
        ("scheduler_deadline_targets_met", "ttft"): 2.0,
        ("scheduler_deadline_targets_met", "latency"): 1.0,
        ("scheduler_deadline_targets_missed", "ttft"): 3.0,
        ("scheduler_deadline_targets_missed", "latency"): 1.0,
    }


def test_an_aborted_request_misses_its_latency_target():
    sched = make_scheduler(DeadlinePolicy)
    sched.add_request(make_request("r", 4, 10, ttft=1.0, latency=1.0))

    def step(k: int) -> None:
        if k == 2:  # its first token came out of step 0
            sched.finish_requests("r", RequestStatus.FINISHED_ABORTED)

    run_to_completion(sched, on_step=step)
    assert sched.policy.targets_met() == {"ttft": 1, "latency": 0}
    assert sched.policy.targets_missed() == {"ttft": 0, "latency": 1}
