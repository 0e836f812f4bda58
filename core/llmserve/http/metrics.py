"""Prometheus metrics, named like vLLM's with the prefix ``llmserve:``.

Each server owns a ``CollectorRegistry`` (never the process-global one), so one process, a
test session for instance, can run several servers. ``ServerMetrics`` is the engine's
``StatLogger``: ``AsyncEngine`` calls ``record`` on the event loop after each message from the
core, with that step's latencies and the core's cumulative counters. The scheduling policy's
own samples (``SchedulingPolicy.metrics``: per-tenant counters, targets met) are exported
under the names the policy gives them, created the first time they are reported.
"""

from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from llmserve.engine.async_engine import IterationStats
from llmserve.scheduler.policy import PolicyMetric

#: Latency buckets in seconds; the low end matters on CPU and for tiny models.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Cumulative counters of ``EngineCore.stats()`` -> metric attribute.
_CORE_COUNTERS = {
    "prefix_cache_queries": "prefix_cache_queries",
    "prefix_cache_hits": "prefix_cache_hits",
    "num_preemptions": "num_preemptions",
    "spec_decode_num_drafts": "spec_decode_num_drafts",
    "spec_decode_num_draft_tokens": "spec_decode_num_draft_tokens",
    "spec_decode_num_accepted_tokens": "spec_decode_num_accepted_tokens",
}


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry

        def histogram(name, doc, buckets):
            return Histogram(f"llmserve:{name}", doc, labels, buckets=buckets, registry=r
                             ).labels(model_name)

        def gauge(name, doc):
            return Gauge(f"llmserve:{name}", doc, labels, registry=r).labels(model_name)

        def counter(name, doc):
            return Counter(f"llmserve:{name}", doc, labels, registry=r).labels(model_name)

        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Time from arrival to the first output token.",
            _TTFT_BUCKETS)
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "Time between consecutive outputs of a request.",
            _ITL_BUCKETS)
        self.e2e_request_latency = histogram(
            "e2e_request_latency_seconds", "Time from arrival to the last output.",
            _REQUEST_BUCKETS)
        self.request_queue_time = histogram(
            "request_queue_time_seconds", "Time from arrival to first scheduling.",
            _REQUEST_BUCKETS)
        self.num_requests_running = gauge("num_requests_running",
                                          "Requests the scheduler is running.")
        self.num_requests_waiting = gauge("num_requests_waiting",
                                          "Requests waiting to be scheduled (incl. preempted).")
        self.kv_cache_usage = gauge("kv_cache_usage_perc",
                                    "Fraction of KV blocks in use (1 = full).")
        self.prefix_cache_queries = counter("prefix_cache_queries",
                                            "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits",
                                         "Prompt tokens found in the prefix cache.")
        self.num_preemptions = counter("num_preemptions", "Preemptions (recompute later).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of requests that started.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.spec_decode_num_drafts = counter(
            "spec_decode_num_drafts", "Speculative decoding: verification steps with drafts.")
        self.spec_decode_num_draft_tokens = counter(
            "spec_decode_num_draft_tokens", "Speculative decoding: draft tokens proposed.")
        self.spec_decode_num_accepted_tokens = counter(
            "spec_decode_num_accepted_tokens", "Speculative decoding: draft tokens accepted.")
        self._spec_accepted_per_pos = Counter(
            "llmserve:spec_decode_num_accepted_tokens_per_pos",
            "Speculative decoding: accepted draft tokens by position (0-based).",
            ["model_name", "position"], registry=r)
        self._last_accepted_per_pos: list[int] = []
        self._request_success = Counter("llmserve:request_success",
                                        "Finished completions by finish reason.",
                                        ["model_name", "finished_reason"], registry=r)
        self._model_name = model_name
        self._last_counters: dict[str, int] = {}
        self._policy_metrics: dict[str, Counter | Gauge] = {}
        self._last_policy_counts: dict[tuple, float] = {}

    def record(self, iteration: Optional[IterationStats], engine_stats: dict) -> None:
        self.num_requests_running.set(engine_stats.get("num_running", 0))
        self.num_requests_waiting.set(engine_stats.get("num_waiting", 0))
        self.kv_cache_usage.set(engine_stats.get("kv_cache_usage", 0.0))
        for key, attr in _CORE_COUNTERS.items():
            value = engine_stats.get(key)
            if value is None:
                continue
            delta = value - self._last_counters.get(key, 0)
            self._last_counters[key] = value
            if delta > 0:
                getattr(self, attr).inc(delta)
        per_pos = engine_stats.get("spec_decode_num_accepted_tokens_per_pos")
        if per_pos:
            last = self._last_accepted_per_pos or [0] * len(per_pos)
            for pos, (now, before) in enumerate(zip(per_pos, last)):
                if now > before:
                    self._spec_accepted_per_pos.labels(self._model_name, str(pos)).inc(
                        now - before)
            self._last_accepted_per_pos = list(per_pos)
        for sample in engine_stats.get("policy_metrics", ()):
            self._record_policy_metric(sample)
        if iteration is None:
            return
        for v in iteration.time_to_first_tokens:
            self.time_to_first_token.observe(v)
        for v in iteration.inter_token_latencies:
            self.inter_token_latency.observe(v)
        for v in iteration.queue_times:
            self.request_queue_time.observe(v)
        for v in iteration.e2e_latencies:
            self.e2e_request_latency.observe(v)
        for reason in iteration.finish_reasons:
            self._request_success.labels(self._model_name, reason).inc()
        if iteration.num_prompt_tokens:
            self.prompt_tokens.inc(iteration.num_prompt_tokens)
        if iteration.num_generation_tokens:
            self.generation_tokens.inc(iteration.num_generation_tokens)

    def _record_policy_metric(self, sample: PolicyMetric) -> None:
        metric = self._policy_metrics.get(sample.name)
        label_names = [k for k, _ in sample.labels]
        if metric is None:
            kind = Counter if sample.kind == "counter" else Gauge
            metric = kind(f"llmserve:{sample.name}", sample.documentation,
                          ["model_name", *label_names], registry=self.registry)
            self._policy_metrics[sample.name] = metric
        child = metric.labels(self._model_name, *(v for _, v in sample.labels))
        if sample.kind == "gauge":
            child.set(sample.value)
            return
        key = (sample.name, sample.labels)
        delta = sample.value - self._last_policy_counts.get(key, 0.0)
        self._last_policy_counts[key] = sample.value
        if delta > 0:
            child.inc(delta)

    def render(self) -> bytes:
        return generate_latest(self.registry)
