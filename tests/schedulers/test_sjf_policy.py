"""Shortest expected job first: short jobs go first, and aging bounds how long a long job
yields to later arrivals."""

from __future__ import annotations

from llmserve.plugin_testing.scheduling import run_to_completion
from llmserve_schedulers.sjf import ShortestJobFirstPolicy
from scheduler_sim import make_config, make_context, make_request, make_scheduler


def test_short_jobs_are_admitted_before_long_ones():
    policy = ShortestJobFirstPolicy(make_config())
    sizes = {"long": (40, 20), "short": (4, 2), "medium": (10, 10), "prompt-heavy": (30, 1)}
    for i, (rid, (prompt, out)) in enumerate(sizes.items()):
        policy.add(make_request(rid, prompt, out, arrival=0.001 * i))
    ctx = make_context(now=1.0)
    assert [policy.pop(ctx).request_id for _ in sizes] == [
        "short", "medium", "prompt-heavy", "long"]


def test_prompt_weight_discounts_prompt_tokens():
    policy = ShortestJobFirstPolicy(make_config(prompt_weight=0.0))
    policy.add(make_request("long-output", 4, 20))
    policy.add(make_request("long-prompt", 100, 2, arrival=0.001))
    assert policy.peek(make_context()).request_id == "long-prompt"


LONG = (40, 20)
SHORT = (4, 2)


def _admissions(aging: float) -> tuple[list[str], dict[str, float]]:
    """One long job at 0, then a stream of short jobs (two a step for 100 steps, more than one
    sequence can serve); returns the admission order and every request's arrival time."""
    sched = make_scheduler(ShortestJobFirstPolicy, max_num_seqs=1, aging_tokens_per_s=aging)
    sched.add_request(make_request("long", *LONG))
    arrivals = {"long": 0.0}
    order: list[str] = []

    def step(k: int) -> None:
        if k < 100:
            for j in range(2):
                rid = f"s{k}.{j}"
                arrivals[rid] = sched.clock()
                sched.add_request(make_request(rid, *SHORT, arrival=arrivals[rid]))
        order.extend(r.request_id for r in sched.running if r.request_id not in order)

    run_to_completion(sched, max_steps=5000, on_step=step)
    return order, arrivals


def test_aging_admits_a_long_job_within_its_bound():
    aging = 200.0
    order, arrivals = _admissions(aging)
    # A later arrival overtakes the long job only while its size is below the long job's
    # minus its age: exactly those arriving in the first (60 - 6) / 200 = 0.27 s.
    overtakers = {rid for rid, t in arrivals.items()
                  if rid != "long" and sum(SHORT) + aging * t < sum(LONG)}
    assert set(order[:order.index("long")]) == overtakers
    # The long job's bound: nothing arriving S / aging = 0.3 s after it goes ahead, while the
    # stream went on for 1 s.
    bound = sum(LONG) / aging
    assert max(arrivals[rid] for rid in overtakers) < bound < max(arrivals.values())


def test_without_aging_the_long_job_waits_for_the_whole_stream():
    order, _ = _admissions(aging=1e-9)
    assert order[-1] == "long"


def test_the_victim_has_the_most_work_left():
    policy = ShortestJobFirstPolicy(make_config())
    running = [make_request("big", 40, 20), make_request("small", 4, 4),
               make_request("tie-first", 30, 30), make_request("tie-last", 30, 30)]
    assert policy.choose_victim(running, make_context()).request_id == "tie-last"
    running[2].num_computed_tokens = 30  # its prompt is computed: 30 tokens of work left
    running[3].num_computed_tokens = 30
    assert policy.choose_victim(running, make_context()).request_id == "big"
