"""Conformance checks for a scheduling policy, on the real ``Scheduler`` with no model.

``check_scheduling_policy(policy_cls)`` drives the scheduler the engine would build around
the policy, answering each step with one token per request that finished its prompt (the
shape of a runner's output), and raises ``AssertionError`` naming what broke:

- admission: ``peek``/``pop`` agree, ``len`` counts the queue, every request is admitted and
  runs to its ``max_tokens``, and the step budgets hold;
- preemption: on a cache too small for the batch, ``choose_victim`` returns a running request,
  victims come back and every request still finishes with all its tokens;
- abort: aborted waiting requests leave the queue and are never admitted;
- starvation: under a steady stream of arrivals of equal priority, the first request is admitted
  within ``max_wait_steps`` steps (a policy that may starve by design documents its bound).
"""

from __future__ import annotations

from collections.abc import Callable

from llmserve.config import SchedulerConfig
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.request import EngineCoreRequest, Request, RequestStatus
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.output import ModelRunnerOutput, SchedulerOutput
from llmserve.scheduler.scheduler import Scheduler

__all__ = ["check_scheduling_policy", "run_to_completion"]

BLOCK_SIZE = 4
MAX_MODEL_LEN = 256


def _request(rid: str, prompt_len: int, max_tokens: int, arrival: float,
             priority: int = 0) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(EngineCoreRequest(rid, list(range(3, 3 + prompt_len)), params,
                                     arrival_time=arrival, priority=priority), MAX_MODEL_LEN)


def _runner_output(scheduler: Scheduler, so: SchedulerOutput) -> ModelRunnerOutput:
    """One sampled token for every scheduled request whose prompt is now computed."""
    ids = [r.req_id for r in so.scheduled_new_reqs] + so.scheduled_cached_reqs.req_ids
    sampled = []
    for rid in ids:
        req = scheduler.requests.get(rid)
        done = req is not None and req.num_computed_tokens >= req.num_tokens
        sampled.append([5] if done else [])
    return ModelRunnerOutput(ids, sampled, [None] * len(ids))


def _scheduler(policy_cls: type, num_blocks: int, max_num_seqs: int = 4,
               max_num_batched_tokens: int = 32) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=MAX_MODEL_LEN)
    return Scheduler(config, KVCacheManager(num_blocks, BLOCK_SIZE), policy_cls(config))


def run_to_completion(scheduler: Scheduler, max_steps: int = 2000,
                      on_step: Callable[[int], None] | None = None) -> dict[str, int]:
    """Step until nothing is left; returns request id -> output tokens at its finish."""
    finished: dict[str, int] = {}
    for step in range(max_steps):
        if on_step is not None:
            on_step(step)
        if not scheduler.has_unfinished_requests():
            return finished
        so = scheduler.schedule()
        assert so.total_num_scheduled_tokens <= scheduler.max_num_batched_tokens, "token budget"
        assert len(so.num_scheduled_tokens) <= scheduler.max_num_seqs, "sequence budget"
        requests = dict(scheduler.requests)
        for out in scheduler.update_from_output(so, _runner_output(scheduler, so)):
            if out.finish_reason is not None:
                finished[out.request_id] = requests[out.request_id].num_output_tokens
    raise AssertionError(f"requests still unfinished after {max_steps} steps")


def _check_queue(policy_cls: type) -> None:
    sched = _scheduler(policy_cls, num_blocks=64)
    reqs = [_request(f"q{i}", 5, 2, arrival=float(i)) for i in range(5)]
    for r in reqs:
        sched.add_request(r)
    policy, ctx = sched.policy, sched.scheduling_context()
    assert len(policy) == 5, f"len(policy) is {len(policy)} after 5 adds"
    assert {id(r) for r in policy} == {id(r) for r in reqs}, "iteration misses requests"
    head = policy.peek(ctx)
    assert head in reqs, "peek returned a request that was never added"
    assert policy.pop(ctx) is head and len(policy) == 4, "pop is not the peeked request"
    policy.prepend(head)
    assert len(policy) == 5, "prepend lost the request"


def _check_admission(policy_cls: type) -> None:
    sched = _scheduler(policy_cls, num_blocks=64)
    for i in range(10):
        sched.add_request(_request(f"a{i}", 3 + i, 4, arrival=float(i)))
    finished = run_to_completion(sched)
    assert finished == {f"a{i}": 4 for i in range(10)}, f"admission: {finished}"


def _check_preemption(policy_cls: type) -> None:
    # 8 blocks of 4 tokens; four requests of 9 prompt + 12 output tokens cannot all fit.
    sched = _scheduler(policy_cls, num_blocks=8)
    for i in range(4):
        sched.add_request(_request(f"p{i}", 9, 12, arrival=float(i)))
    finished = run_to_completion(sched)
    assert sched.num_preemptions > 0, "the tiny cache should have forced a preemption"
    assert finished == {f"p{i}": 12 for i in range(4)}, f"after preemption: {finished}"
    assert sched.kv_cache_manager.num_free_blocks == 8, "blocks leaked"


def _check_abort(policy_cls: type) -> None:
    sched = _scheduler(policy_cls, num_blocks=64, max_num_seqs=1)
    for i in range(4):
        sched.add_request(_request(f"x{i}", 5, 3, arrival=float(i)))
    sched.finish_requests(["x2", "x3"], RequestStatus.FINISHED_ABORTED)
    assert len(sched.policy) == 2, f"{len(sched.policy)} queued after aborting 2 of 4"
    finished = run_to_completion(sched)
    assert set(finished) == {"x0", "x1"}, f"aborted requests ran: {sorted(finished)}"


def _check_starvation(policy_cls: type, max_wait_steps: int) -> None:
    sched = _scheduler(policy_cls, num_blocks=256, max_num_seqs=2)
    sched.add_request(_request("first", 8, 4, arrival=0.0))
    admitted_at: list[int] = []

    def arrive(step: int) -> None:
        if step < 200:  # two new requests a step, more than two sequences can serve
            for k in range(2):
                sched.add_request(_request(f"s{step}.{k}", 8, 4, arrival=1.0 + step))
        first = sched.requests.get("first")
        if not admitted_at and (first is None or first.first_scheduled_time is not None):
            admitted_at.append(step)

    run_to_completion(sched, max_steps=5000, on_step=arrive)
    assert admitted_at and admitted_at[0] <= max_wait_steps, (
        f"the first request waited {admitted_at[0] if admitted_at else 'forever'} steps "
        f"under a stream of later arrivals (allowed {max_wait_steps})")


def check_scheduling_policy(policy_cls: type, max_wait_steps: int = 10) -> None:
    """Run every check on ``policy_cls`` (a ``SchedulingPolicy`` subclass)."""
    _check_queue(policy_cls)
    _check_admission(policy_cls)
    _check_preemption(policy_cls)
    _check_abort(policy_cls)
    _check_starvation(policy_cls, max_wait_steps)
