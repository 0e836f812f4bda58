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
  within ``max_wait_steps`` steps (a policy that may starve by design documents its bound);
- hints: requests of several tenants with latency targets (``SchedulingHints``), preempted and
  aborted while running, all finish; ``on_step`` and ``metrics`` do not raise, every metric
  name keeps one kind and one set of label names, and counters never decrease;
- options: the policy builds with no options, and an unknown option is a ``ValueError``.

The scheduler runs on a simulated clock (``SimClock``: ``STEP_S`` per step, arrivals on the
same clock), so time-based policies see consistent ``now`` and arrival times.

The same pieces serve a policy author's own simulations and benchmarks, without a model:
``simulated_scheduler(policy, num_blocks)`` is the real ``Scheduler`` and ``KVCacheManager``
around a policy, on a ``SimClock``; ``stand_in_output(scheduler, so)`` answers a step as a
model would (one token per request whose prompt is computed).
"""

from __future__ import annotations

from collections.abc import Callable

from llmserve.config import SchedulerConfig
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.request import NO_HINTS, EngineCoreRequest, Request, RequestStatus, SchedulingHints
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.output import ModelRunnerOutput, SchedulerOutput
from llmserve.scheduler.policy import PolicyMetric
from llmserve.scheduler.scheduler import Scheduler

# ``Scheduler`` is re-exported for annotating simulations; build one with simulated_scheduler.
__all__ = ["Scheduler", "SimClock", "check_scheduling_policy", "run_to_completion",
           "simulated_scheduler", "stand_in_output"]

BLOCK_SIZE = 4
MAX_MODEL_LEN = 256
#: Simulated seconds per step.
STEP_S = 0.01


class SimClock:
    """A clock that moves only when told to; ``run_to_completion`` advances it each step."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _request(rid: str, prompt_len: int, max_tokens: int, arrival: float,
             priority: int = 0, hints: SchedulingHints = NO_HINTS) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(EngineCoreRequest(rid, list(range(3, 3 + prompt_len)), params,
                                     arrival_time=arrival, priority=priority, hints=hints),
                   MAX_MODEL_LEN)


def stand_in_output(scheduler: Scheduler, so: SchedulerOutput,
                    token_id: int = 5) -> ModelRunnerOutput:
    """What a model would answer to ``so``: ``token_id`` sampled for every scheduled request
    whose prompt is now computed, nothing for a request mid-prefill."""
    ids = [r.req_id for r in so.scheduled_new_reqs] + so.scheduled_cached_reqs.req_ids
    sampled = []
    for rid in ids:
        req = scheduler.requests.get(rid)
        done = req is not None and req.num_computed_tokens >= req.num_tokens
        sampled.append([token_id] if done else [])
    return ModelRunnerOutput(ids, sampled, [None] * len(ids))


def simulated_scheduler(policy, num_blocks: int, block_size: int = BLOCK_SIZE,
                        enable_prefix_caching: bool = True,
                        clock: SimClock | None = None) -> Scheduler:
    """The engine's ``Scheduler`` and ``KVCacheManager`` (``num_blocks`` of ``block_size``
    tokens) around ``policy`` (an instance; its ``config`` sets the budgets), on ``clock``
    (a new ``SimClock`` by default)."""
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching)
    return Scheduler(policy.config, kv, policy, clock=clock if clock is not None else SimClock())


def _scheduler(policy_cls: type, num_blocks: int, max_num_seqs: int = 4,
               max_num_batched_tokens: int = 32) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=MAX_MODEL_LEN)
    return simulated_scheduler(policy_cls(config), num_blocks)


def run_to_completion(scheduler: Scheduler, max_steps: int = 2000,
                      on_step: Callable[[int], None] | None = None) -> dict[str, int]:
    """Step until nothing is left; returns request id -> output tokens at its finish.

    A scheduler on a ``SimClock`` sees it advance ``STEP_S`` after every step."""
    finished: dict[str, int] = {}
    clock = scheduler.clock
    for step in range(max_steps):
        if on_step is not None:
            on_step(step)
        if not scheduler.has_unfinished_requests():
            return finished
        if isinstance(clock, SimClock) and step:
            clock.advance(STEP_S)
        so = scheduler.schedule()
        assert so.total_num_scheduled_tokens <= scheduler.max_num_batched_tokens, "token budget"
        assert len(so.num_scheduled_tokens) <= scheduler.max_num_seqs, "sequence budget"
        requests = dict(scheduler.requests)
        for out in scheduler.update_from_output(so, stand_in_output(scheduler, so)):
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
                sched.add_request(_request(f"s{step}.{k}", 8, 4, arrival=sched.clock()))
        first = sched.requests.get("first")
        if not admitted_at and (first is None or first.first_scheduled_time is not None):
            admitted_at.append(step)

    run_to_completion(sched, max_steps=5000, on_step=arrive)
    assert admitted_at and admitted_at[0] <= max_wait_steps, (
        f"the first request waited {admitted_at[0] if admitted_at else 'forever'} steps "
        f"under a stream of later arrivals (allowed {max_wait_steps})")


def _check_metrics(samples: list, seen: dict[str, tuple], counters: dict[tuple, float]) -> None:
    assert isinstance(samples, list), f"metrics() returned {type(samples).__name__}, not a list"
    for m in samples:
        assert isinstance(m, PolicyMetric), f"metrics() returned {m!r}, not a PolicyMetric"
        assert m.kind in ("counter", "gauge"), f"metric {m.name}: kind {m.kind!r}"
        shape = (m.kind, tuple(k for k, _ in m.labels))
        assert seen.setdefault(m.name, shape) == shape, (
            f"metric {m.name} changed its kind or label names: {seen[m.name]} then {shape}")
        if m.kind == "counter":
            key = (m.name, m.labels)
            assert m.value >= counters.get(key, 0.0), f"counter {key} decreased"
            counters[key] = m.value


def _check_hints(policy_cls: type) -> None:
    # 12 blocks of 4 tokens for six requests of 9 + 10 tokens: preemptions are certain.
    sched = _scheduler(policy_cls, num_blocks=12)
    tenants = ("a", "a", "a", "a", "b", None)
    for i, tenant in enumerate(tenants):
        hints = SchedulingHints(tenant=tenant, ttft_target_s=0.05 * (i + 1),
                                latency_target_s=None if i % 2 else 1.0)
        sched.add_request(_request(f"h{i}", 9, 10, arrival=0.0, hints=hints))
    seen: dict[str, tuple] = {}
    counters: dict[tuple, float] = {}

    def step(k: int) -> None:
        _check_metrics(sched.policy.metrics(), seen, counters)
        running = [r.request_id for r in sched.running]
        if k == 3 and running:  # abort one running request mid-flight
            sched.finish_requests(running[0], RequestStatus.FINISHED_ABORTED)
            aborted.append(running[0])

    aborted: list[str] = []
    finished = run_to_completion(sched, on_step=step)
    _check_metrics(sched.policy.metrics(), seen, counters)
    assert sched.num_preemptions > 0, "the small cache should have forced a preemption"
    expected = {f"h{i}" for i in range(len(tenants))} - set(aborted)
    assert set(finished) == expected and all(n == 10 for n in finished.values()), (
        f"with tenants and targets: finished {finished}, aborted {aborted}")
    assert sched.kv_cache_manager.num_free_blocks == 12, "blocks leaked"


def _check_options(policy_cls: type) -> None:
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32,
                             max_model_len=MAX_MODEL_LEN)
    policy_cls(config)
    bad = config.model_copy(update={"policy_config": {"no_such_option_xyz": 1}})
    try:
        policy_cls(bad)
    except ValueError as exc:
        assert "no_such_option_xyz" in str(exc), f"the error does not name the option: {exc}"
    else:
        raise AssertionError("an unknown option was accepted")


def check_scheduling_policy(policy_cls: type, max_wait_steps: int = 10) -> None:
    """Run every check on ``policy_cls`` (a ``SchedulingPolicy`` subclass)."""
    _check_options(policy_cls)
    _check_queue(policy_cls)
    _check_admission(policy_cls)
    _check_preemption(policy_cls)
    _check_abort(policy_cls)
    _check_starvation(policy_cls, max_wait_steps)
    _check_hints(policy_cls)
