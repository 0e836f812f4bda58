"""Requests and schedulers for driving the plugin's policies through the real ``Scheduler``
on a simulated clock, with no model (one sampled token per request whose prompt is done)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from llmserve import SamplingParams
from llmserve.config import SchedulerConfig
from llmserve.plugin_testing.scheduling import Scheduler, simulated_scheduler
from llmserve.request import EngineCoreRequest, Request, SchedulingHints
from llmserve.scheduler.policy import SchedulingContext, SchedulingPolicy

BLOCK = 4
MAX_MODEL_LEN = 512
# Each default prompt starts a fresh token range, so no two share a prefix.
_prompt_starts = itertools.count(1000, MAX_MODEL_LEN)


def make_request(rid: str, prompt_len: int = 8, max_tokens: int = 4, arrival: float = 0.0,
                 tenant: str | None = None, ttft: float | None = None,
                 latency: float | None = None,
                 prompt: list[int] | None = None) -> Request:
    """A request whose prompt shares nothing with other requests unless ``prompt`` is given."""
    if prompt is None:
        start = next(_prompt_starts)
        prompt = list(range(start, start + prompt_len))
    hints = SchedulingHints(tenant=tenant, ttft_target_s=ttft, latency_target_s=latency)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(EngineCoreRequest(rid, prompt, params, arrival_time=arrival, hints=hints),
                   MAX_MODEL_LEN)


def make_config(max_num_seqs: int = 4, budget: int = 32, **options) -> SchedulerConfig:
    return SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                           max_model_len=MAX_MODEL_LEN, policy_config=options)


def make_scheduler(policy_cls: type[SchedulingPolicy], num_blocks: int = 256,
                   max_num_seqs: int = 4, budget: int = 32, prefix_caching: bool = True,
                   **options) -> Scheduler:
    config = make_config(max_num_seqs, budget, **options)
    return simulated_scheduler(policy_cls(config), num_blocks, BLOCK, prefix_caching)


def make_context(now: float = 0.0, cached: dict[str, int] | None = None,
                 lookup: Callable[[Request], int] | None = None) -> SchedulingContext:
    """A context for calling a policy directly. Cached prefixes come from ``lookup``, else
    from ``cached`` (request id -> tokens), else are 0."""
    table = cached or {}

    def from_table(request: Request) -> int:
        return table.get(request.request_id, 0)

    return SchedulingContext(config=make_config(), kv_cache_usage=0.0, num_free_blocks=256,
                             num_budget_tokens=32, num_running=0, num_waiting=0, now=now,
                             _cached_prefix=lookup or from_table)
