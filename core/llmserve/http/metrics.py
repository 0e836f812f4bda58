"""Prometheus metrics, named like vLLM's with the prefix ``llmserve:``.

Each server owns a ``CollectorRegistry`` (never the process-global one), so one process, a
test session for instance, can run several servers. ``ServerMetrics`` is the engine's
``StatLogger``: ``AsyncEngine`` calls ``record`` on the event loop after each message from a
core, with that step's latencies and the core's cumulative counters.

Every series but the policy's carries the labels ``model_name`` and ``engine``, as in vLLM:
``engine`` is the core's data-parallel rank ("0" without data parallelism), so with
``--data-parallel-size N`` each replica has its own running / waiting requests, KV cache
usage, prefix-cache counters and latencies; a sum over ``engine`` is the server's total.

The scheduling policy's own samples (``SchedulingPolicy.metrics``: per-tenant counters,
targets met) are exported under the names and labels the policy gives them, created the first
time they are reported, and added up over the replicas (each core runs its own policy).
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

#: ``EngineCore.stats()`` key -> (gauge name, documentation).
_CORE_GAUGES = {
    "num_running": ("num_requests_running", "Requests the scheduler is running."),
    "num_waiting": ("num_requests_waiting", "Requests waiting to be scheduled (incl. preempted)."),
    "kv_cache_usage": ("kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full)."),
}
#: Cumulative counters of ``EngineCore.stats()`` -> (counter name, documentation).
_CORE_COUNTERS = {
    "prefix_cache_queries": ("prefix_cache_queries",
                             "Prompt tokens looked up in the prefix cache."),
    "prefix_cache_hits": ("prefix_cache_hits", "Prompt tokens found in the prefix cache."),
    "num_preemptions": ("num_preemptions", "Preemptions (recompute later)."),
    "spec_decode_num_drafts": ("spec_decode_num_drafts",
                               "Speculative decoding: verification steps with drafts."),
    "spec_decode_num_draft_tokens": ("spec_decode_num_draft_tokens",
                                     "Speculative decoding: draft tokens proposed."),
    "spec_decode_num_accepted_tokens": ("spec_decode_num_accepted_tokens",
                                        "Speculative decoding: draft tokens accepted."),
}
#: ``IterationStats`` list -> (histogram name, documentation, buckets).
_HISTOGRAMS = {
    "time_to_first_tokens": ("time_to_first_token_seconds",
                             "Time from arrival to the first output token.", _TTFT_BUCKETS),
    "inter_token_latencies": ("inter_token_latency_seconds",
                              "Time between consecutive outputs of a request.", _ITL_BUCKETS),
    "e2e_latencies": ("e2e_request_latency_seconds", "Time from arrival to the last output.",
                      _REQUEST_BUCKETS),
    "queue_times": ("request_queue_time_seconds", "Time from arrival to first scheduling.",
                    _REQUEST_BUCKETS),
}
_LABELS = ["model_name", "engine"]


class _EngineSeries:
    """One engine core's series of every per-engine family, and the core's last cumulative
    counts (the core reports totals; Prometheus counters take increments)."""

    def __init__(self, families: "ServerMetrics", labels: tuple[str, str]) -> None:
        self.labels = labels
        self.gauges = {key: families.gauges[key].labels(*labels) for key in _CORE_GAUGES}
        self.counters = {key: families.counters[key].labels(*labels) for key in _CORE_COUNTERS}
        self.histograms = {key: families.histograms[key].labels(*labels)
                           for key in _HISTOGRAMS}
        self.prompt_tokens = families.prompt_tokens.labels(*labels)
        self.generation_tokens = families.generation_tokens.labels(*labels)
        self.last_counts: dict[str, int] = {}
        self.last_accepted_per_pos: list[int] = []


class ServerMetrics:
    """The server's Prometheus metrics, for ``num_engines`` engine cores."""

    def __init__(self, model_name: str, num_engines: int = 1) -> None:
        self.registry = r = CollectorRegistry()
        self.gauges = {key: Gauge(f"llmserve:{name}", doc, _LABELS, registry=r)
                       for key, (name, doc) in _CORE_GAUGES.items()}
        self.counters = {key: Counter(f"llmserve:{name}", doc, _LABELS, registry=r)
                         for key, (name, doc) in _CORE_COUNTERS.items()}
        self.histograms = {key: Histogram(f"llmserve:{name}", doc, _LABELS, buckets=buckets,
                                          registry=r)
                           for key, (name, doc, buckets) in _HISTOGRAMS.items()}
        self.prompt_tokens = Counter("llmserve:prompt_tokens",
                                     "Prompt tokens of requests that started.", _LABELS,
                                     registry=r)
        self.generation_tokens = Counter("llmserve:generation_tokens", "Generated tokens.",
                                         _LABELS, registry=r)
        self._spec_accepted_per_pos = Counter(
            "llmserve:spec_decode_num_accepted_tokens_per_pos",
            "Speculative decoding: accepted draft tokens by position (0-based).",
            [*_LABELS, "position"], registry=r)
        self._request_success = Counter("llmserve:request_success",
                                        "Finished completions by finish reason.",
                                        [*_LABELS, "finished_reason"], registry=r)
        self._model_name = model_name
        self._engines = [_EngineSeries(self, (model_name, str(i))) for i in range(num_engines)]
        self._policy_metrics: dict[str, Counter | Gauge] = {}
        #: Per (engine, name, labels): a policy counter's last total.
        self._last_policy_counts: dict[tuple, float] = {}
        #: Per (name, labels): a policy gauge's last value on each engine.
        self._policy_gauge_values: dict[tuple, dict[int, float]] = {}

    def record(self, iteration: Optional[IterationStats], engine_stats: dict,
               engine: int = 0) -> None:
        series = self._engines[engine]
        for key, gauge in series.gauges.items():
            gauge.set(engine_stats.get(key, 0))
        for key, counter in series.counters.items():
            value = engine_stats.get(key)
            if value is None:
                continue
            delta = value - series.last_counts.get(key, 0)
            series.last_counts[key] = value
            if delta > 0:
                counter.inc(delta)
        per_pos = engine_stats.get("spec_decode_num_accepted_tokens_per_pos")
        if per_pos:
            last = series.last_accepted_per_pos or [0] * len(per_pos)
            for pos, (now, before) in enumerate(zip(per_pos, last)):
                if now > before:
                    self._spec_accepted_per_pos.labels(*series.labels, str(pos)).inc(
                        now - before)
            series.last_accepted_per_pos = list(per_pos)
        for sample in engine_stats.get("policy_metrics", ()):
            self._record_policy_metric(engine, sample)
        if iteration is None:
            return
        for key, histogram in series.histograms.items():
            for v in getattr(iteration, key):
                histogram.observe(v)
        for reason in iteration.finish_reasons:
            self._request_success.labels(*series.labels, reason).inc()
        if iteration.num_prompt_tokens:
            series.prompt_tokens.inc(iteration.num_prompt_tokens)
        if iteration.num_generation_tokens:
            series.generation_tokens.inc(iteration.num_generation_tokens)

    def _record_policy_metric(self, engine: int, sample: PolicyMetric) -> None:
        metric = self._policy_metrics.get(sample.name)
        label_names = [k for k, _ in sample.labels]
        if metric is None:
            kind = Counter if sample.kind == "counter" else Gauge
            metric = kind(f"llmserve:{sample.name}", sample.documentation,
                          ["model_name", *label_names], registry=self.registry)
            self._policy_metrics[sample.name] = metric
        child = metric.labels(self._model_name, *(v for _, v in sample.labels))
        key = (sample.name, sample.labels)
        if sample.kind == "gauge":
            values = self._policy_gauge_values.setdefault(key, {})
            values[engine] = sample.value
            child.set(sum(values.values()))
            return
        delta = sample.value - self._last_policy_counts.get((engine, *key), 0.0)
        self._last_policy_counts[(engine, *key)] = sample.value
        if delta > 0:
            child.inc(delta)

    def render(self) -> bytes:
        return generate_latest(self.registry)
