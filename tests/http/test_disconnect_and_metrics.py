"""Client disconnects abort their requests and give the KV blocks back; the Prometheus
metrics count what happened."""

from __future__ import annotations

import time

import httpx
import pytest
from http_helpers import metric

RUNNING = "llmserve:num_requests_running"
WAITING = "llmserve:num_requests_waiting"
KV_USAGE = "llmserve:kv_cache_usage_perc"
GENERATED = "llmserve:generation_tokens_total"


def scrape(server) -> str:
    return httpx.get(server.url + "/metrics", timeout=30).text


def wait_idle(server, timeout_s: float = 20.0) -> str:
    """Metrics once nothing runs or waits and no KV block is held."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape(server)
        if metric(text, RUNNING) == 0 and metric(text, WAITING) == 0 \
                and metric(text, KV_USAGE) == 0:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"engine not idle after {timeout_s} s:\n"
                        + "\n".join(line for line in text.splitlines()
                                    if "num_requests" in line or "kv_cache" in line))
        time.sleep(0.05)


def test_stream_disconnect_aborts_and_frees_kv_blocks(server, auth):
    before = wait_idle(server)
    body = {"prompt": "The try statement", "max_tokens": 230, "ignore_eos": True,
            "stream": True}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            # Keep the iterator referenced: closing it (as a finished ``for`` would) closes
            # the connection.
            lines = r.iter_lines()
            chunks = 0
            while chunks < 3:
                chunks += next(lines).startswith("data: {")
            during = scrape(server)
            # The request holds KV blocks while it streams.
            assert metric(during, RUNNING) == 1, "\n".join(
                line for line in during.splitlines()
                if not line.startswith("#") and "bucket" not in line)
            assert metric(during, KV_USAGE) > 0
        # Leaving the block closes the connection mid-stream.
    after = wait_idle(server)
    generated = metric(after, GENERATED) - metric(before, GENERATED)
    assert 3 <= generated < 230, generated  # stopped early: aborted, not finished
    assert metric(after, KV_USAGE) == 0.0


def test_non_streaming_disconnect_aborts_too(server, auth):
    before = wait_idle(server)
    body = {"prompt": "The", "max_tokens": 250, "ignore_eos": True, "n": 4}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, headers=auth, timeout=0.5)
    after = wait_idle(server)
    generated = metric(after, GENERATED) - metric(before, GENERATED)
    assert generated < 4 * 250, generated


def test_metrics_count_tokens_and_latencies(server, http):
    before = wait_idle(server)
    r = http.post("/v1/completions", json={"prompt": ["The class", "A module is"],
                                           "max_tokens": 9, "ignore_eos": True})
    usage = r.json()["usage"]
    after = scrape(server)

    def delta(name, labels=""):
        return metric(after, name, labels) - metric(before, name, labels, default=0.0)

    assert delta("llmserve:prompt_tokens_total") == usage["prompt_tokens"]
    assert delta(GENERATED) == usage["completion_tokens"] == 18
    assert delta("llmserve:time_to_first_token_seconds_count") == 2
    assert delta("llmserve:e2e_request_latency_seconds_count") == 2
    assert delta("llmserve:request_queue_time_seconds_count") == 2
    assert delta("llmserve:inter_token_latency_seconds_count") == 2 * 8
    assert delta("llmserve:request_success_total", 'finished_reason="length"') == 2
    assert delta("llmserve:prefix_cache_queries_total") >= usage["prompt_tokens"]
    for name in ("llmserve:prefix_cache_hits_total", "llmserve:num_preemptions_total",
                 "llmserve:time_to_first_token_seconds_sum"):
        metric(after, name)  # present
    ttft = delta("llmserve:time_to_first_token_seconds_sum") / 2
    e2e = delta("llmserve:e2e_request_latency_seconds_sum") / 2
    assert 0 < ttft <= e2e < 60
