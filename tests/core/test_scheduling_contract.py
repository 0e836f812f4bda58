"""The scheduling-policy contract of plugin API 1.2: options, per-step feedback, metrics, the
context's cached-prefix lookup, request hints and the scheduler's clock."""

from __future__ import annotations

import pytest

from llmserve import LLM
from llmserve.config import EngineArgs, SchedulerConfig
from llmserve.http.metrics import ServerMetrics
from llmserve.http.protocol import CompletionRequest
from llmserve.http.serving_common import scheduling_hints
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.plugin_testing.scheduling import SimClock, check_scheduling_policy, run_to_completion
from llmserve.request import EngineCoreRequest, Request, RequestStatus, SchedulingHints
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.policy import (
    FCFSPolicy,
    PolicyMetric,
    PolicyOptions,
    StepFeedback,
    parse_policy_options,
)
from llmserve.scheduler.output import ModelRunnerOutput
from llmserve.scheduler.scheduler import Scheduler
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

BLOCK = 4


class Recording(FCFSPolicy):
    """FCFS that keeps every feedback it is given, and takes one bounded option."""

    name = "recording"

    class Options(PolicyOptions):
        window: int = Field(8, ge=1, le=64)

    def __init__(self, config):
        super().__init__(config)
        self.feedback: list[StepFeedback] = []

    def on_step(self, feedback):
        # Keep ids and statuses only: a policy must not keep the finished requests.
        self.feedback.append(StepFeedback(dict(feedback.num_scheduled_tokens),
                                          set(feedback.preempted),
                                          [(r.request_id, r.status) for r in feedback.finished],
                                          feedback.now))

    def metrics(self):
        return [PolicyMetric("recording_steps", "Steps seen.", "counter",
                             float(len(self.feedback)))]


def _request(rid, prompt_len, max_tokens, arrival=0.0, hints=SchedulingHints(), first=3):
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(EngineCoreRequest(rid, list(range(first, first + prompt_len)), params,
                                     arrival_time=arrival, hints=hints), 256)


def _scheduler(policy_cls=Recording, num_blocks=64, max_num_seqs=4, budget=32, **options):
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                             max_model_len=256, policy_config=options)
    return Scheduler(config, KVCacheManager(num_blocks, BLOCK), policy_cls(config),
                     clock=SimClock())


def test_a_conforming_policy_with_options_passes_the_kit():
    check_scheduling_policy(Recording)


def test_feedback_reports_every_scheduled_token_once():
    sched = _scheduler(budget=16)
    for i in range(6):
        sched.add_request(_request(f"r{i}", 10 + i, 5, first=3 + 40 * i))  # no shared prefix
    run_to_completion(sched)
    fb = sched.policy.feedback
    per_request: dict[str, int] = {}
    for step in fb:
        for rid, n in step.num_scheduled_tokens.items():
            per_request[rid] = per_request.get(rid, 0) + n
    # Prompt plus every output token but the last (sampled, never computed).
    assert per_request == {f"r{i}": 10 + i + 5 - 1 for i in range(6)}
    finished = [item for step in fb for item in step.finished]
    assert sorted(finished) == [(f"r{i}", RequestStatus.FINISHED_LENGTH_CAPPED)
                                for i in range(6)]
    assert [step.now for step in fb] == sorted(step.now for step in fb)
    assert all(sum(s.num_scheduled_tokens.values()) <= 16 for s in fb)


def test_feedback_reports_preemptions_and_aborts_of_waiting_requests():
    sched = _scheduler(num_blocks=8)
    for i in range(4):
        sched.add_request(_request(f"p{i}", 9, 12))
    sched.add_request(_request("gone", 5, 3))
    sched.finish_requests("gone", RequestStatus.FINISHED_ABORTED)
    run_to_completion(sched)
    fb = sched.policy.feedback
    preempted = [rid for step in fb for rid in step.preempted]
    assert len(preempted) == sched.num_preemptions > 0
    assert fb[0].finished == [("gone", RequestStatus.FINISHED_ABORTED)]


def test_scheduler_clock_stamps_steps_and_first_tokens():
    clock = SimClock(100.0)
    config = SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=8, max_model_len=256)
    sched = Scheduler(config, KVCacheManager(64, BLOCK), Recording(config), clock=clock)
    sched.add_request(_request("a", 12, 3, arrival=100.0))
    times = []
    while sched.has_unfinished_requests():
        so = sched.schedule()
        req = sched.requests["a"]
        rows = [[7] if req.num_computed_tokens >= req.num_tokens else []]
        sched.update_from_output(so, ModelRunnerOutput(["a"], rows, [None]))
        times.append((req.first_scheduled_time, req.first_token_time))
        clock.advance(1.0)
    # 12 prompt tokens in chunks of 8: the first token comes out of the second step.
    assert times == [(100.0, None)] + [(100.0, 101.0)] * 3
    assert [f.now for f in sched.policy.feedback] == [100.0, 101.0, 102.0, 103.0]


def test_cached_prefix_tokens_looks_without_counting():
    sched = _scheduler(num_blocks=64)
    sched.add_request(_request("first", 17, 1))
    run_to_completion(sched)
    queries = sched.kv_cache_manager.prefix_cache_stats.queries
    ctx = sched.scheduling_context()
    same = _request("same", 17, 1)
    other = _request("other", 17, 1, first=50)
    # 17 tokens: the four full blocks; at least the last token is always computed again.
    assert ctx.cached_prefix_tokens(same) == 16
    assert ctx.cached_prefix_tokens(other) == 0
    assert sched.kv_cache_manager.prefix_cache_stats.queries == queries


def test_options_are_validated_and_named():
    assert parse_policy_options(Recording, {"window": 4}).window == 4
    assert parse_policy_options(Recording, None).window == 8
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['size'\] for policy "
                                         r"'recording'; its options are \['window'\]"):
        parse_policy_options(Recording, {"size": 4})
    with pytest.raises(ValueError, match=r"window: Input should be less than or equal to 64 "
                                         r"\(got 65\)"):
        parse_policy_options(Recording, {"window": 65})
    with pytest.raises(ValueError, match="policy 'fcfs' takes no options, got \\['window'\\]"):
        parse_policy_options(FCFSPolicy, {"window": 4})
    with pytest.raises(ValueError, match="unknown option"):
        _scheduler(size=3)


def test_policy_config_is_json_or_a_dict():
    assert EngineArgs(scheduling_policy_config='{"a": 1}').scheduling_policy_config == {"a": 1}
    assert EngineArgs(scheduling_policy_config={"a": 1}).scheduling_policy_config == {"a": 1}
    with pytest.raises(ValueError, match="(?s)scheduling_policy_config.*not valid JSON"):
        EngineArgs(scheduling_policy_config="{weights")
    with pytest.raises(ValueError, match="(?s)scheduling_policy_config.*JSON object"):
        EngineArgs(scheduling_policy_config="[1, 2]")


def test_engine_refuses_unknown_policies_and_options_before_loading():
    with pytest.raises(ValueError, match=r"scheduling_policy must be one of the installed "
                                         r"policies \[.*'fcfs'.*'priority'.*\], got 'nope'"):
        LLM(scheduling_policy="nope")
    with pytest.raises(ValueError, match="policy 'priority' takes no options"):
        LLM(scheduling_policy="priority", scheduling_policy_config={"x": 1})


def test_hints_are_validated():
    with pytest.raises(ValueError, match=r"ttft_target_s must be > 0 seconds, got -1"):
        SchedulingHints(ttft_target_s=-1)
    with pytest.raises(ValueError, match=r"latency_target_s must be > 0 seconds, got 0"):
        SchedulingHints(latency_target_s=0)


def test_http_tenant_comes_from_the_header_else_user():
    req = CompletionRequest(prompt="x", user="alice", ttft_target_s=0.5)
    assert scheduling_hints(req, {}) == SchedulingHints("alice", 0.5, None)
    assert scheduling_hints(req, {"x-tenant": "team-b"}).tenant == "team-b"
    assert scheduling_hints(CompletionRequest(prompt="x"), {}) == SchedulingHints()


def test_offline_hints_reach_the_policy():
    seen: dict[str, SchedulingHints] = {}

    class Spy(FCFSPolicy):
        def add(self, request):
            seen[request.request_id] = request.hints
            super().add(request)

    llm = LLM(max_model_len=128, kv_cache_memory=16 * 2**20)
    llm.llm_engine.core.scheduler.policy = Spy(llm.llm_engine.core.scheduler.config)
    hints = [SchedulingHints(tenant="a"), SchedulingHints(tenant="b", latency_target_s=2.0)]
    outs = llm.generate(["hello", "world"], SamplingParams(max_tokens=2), use_tqdm=False,
                        scheduling_hints=hints)
    assert len(outs) == 2
    assert sorted(seen.values(), key=lambda h: h.tenant) == hints
    with pytest.raises(ValueError, match=r"scheduling_hints must be one SchedulingHints or "
                                         r"one per prompt \(2\), got 1"):
        llm.generate(["a", "b"], scheduling_hints=hints[:1], use_tqdm=False)


def test_policy_metrics_are_exported():
    metrics = ServerMetrics("m")

    def stats(tokens_a, tokens_b, waiting):
        return {"policy_metrics": [
            PolicyMetric("tenant_tokens", "Tokens.", "counter", tokens_a, (("tenant", "a"),)),
            PolicyMetric("tenant_tokens", "Tokens.", "counter", tokens_b, (("tenant", "b"),)),
            PolicyMetric("tenant_waiting", "Waiting.", "gauge", waiting, (("tenant", "a"),)),
        ]}

    metrics.record(None, stats(5, 0, 3))
    metrics.record(None, stats(12, 4, 1))
    samples = {(s.name, s.labels.get("tenant")): (s.value, s.labels["model_name"])
               for family in text_string_to_metric_families(metrics.render().decode())
               for s in family.samples if "tenant" in s.name}
    assert samples[("llmserve:tenant_tokens_total", "a")] == (12.0, "m")
    assert samples[("llmserve:tenant_tokens_total", "b")] == (4.0, "m")
    assert samples[("llmserve:tenant_waiting", "a")] == (1.0, "m")
