"""``llmserve serve --data-parallel-size 2``: two engine cores behind one API server.

Nothing is lost under concurrent streams, greedy answers equal one core's, requests that share
a prefix meet their replica's prefix cache, ``/metrics`` has a series per replica, and a dead
replica takes the server down. The balancer's rule is also tested alone, without processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal

import httpx
import pytest
from http_helpers import SERVER_ARGS, Server, metric, running_server
from prometheus_client.parser import text_string_to_metric_families

from llmserve.engine.data_parallel import (
    AFFINITY_BLOCKS,
    AFFINITY_SLACK,
    ReplicaBalancer,
    merge_replica_stats,
)

DP_ARGS = [*SERVER_ARGS, "--data-parallel-size", "2"]
SUCCESS = "llmserve:request_success_total"
HITS = "llmserve:prefix_cache_hits_total"


@pytest.fixture(scope="module")
def dp_server(tmp_path_factory):
    with running_server(DP_ARGS, tmp_path_factory.mktemp("dp_server")) as s:
        yield s


def scrape(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=30).text


def per_engine(text: str, name: str) -> list[float]:
    return [metric(text, name, f'engine="{i}"', default=0.0) for i in range(2)]


def block_size(server: Server) -> int:
    return int(re.search(r"blocks of (\d+)", server.log()).group(1))


def text_prompts(seed: int, num: int, min_words: int, max_words: int) -> list[str]:
    from llmserve.testing import local_text

    words = local_text().split()
    rng = random.Random(seed)
    prompts = []
    for _ in range(num):
        start = rng.randrange(len(words) - max_words)
        prompts.append(" ".join(words[start:start + rng.randint(min_words, max_words)]))
    return prompts


def tokenize(http: httpx.Client, prompt: str) -> list[int]:
    r = http.post("/tokenize", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def complete(http: httpx.Client, prompt, max_tokens: int = 12) -> str:
    r = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens,
                                           "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    return choice["text"]


async def stream_one(client: httpx.AsyncClient, prompt: str) -> tuple[int, str, bool]:
    """(completion tokens from usage, last finish_reason, saw [DONE])."""
    body = {"prompt": prompt, "max_tokens": 8, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    tokens, reason, done = 0, None, False
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            for choice in event["choices"]:
                reason = choice["finish_reason"] or reason
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return tokens, reason, done


def test_100_concurrent_streams_use_both_replicas(dp_server, auth):
    prompts = text_prompts(seed=7, num=100, min_words=1, max_words=40)
    before = scrape(dp_server)

    async def run():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=dp_server.url, headers=auth, timeout=60,
                                     limits=limits) as client:
            return await asyncio.gather(*[stream_one(client, p) for p in prompts])

    results = asyncio.run(asyncio.wait_for(run(), 60))
    assert results == [(8, "length", True)] * 100
    after = scrape(dp_server)
    served = [a - b for a, b in zip(per_engine(after, SUCCESS), per_engine(before, SUCCESS))]
    generated = [a - b for a, b in zip(per_engine(after, "llmserve:generation_tokens_total"),
                                       per_engine(before, "llmserve:generation_tokens_total"))]
    assert sum(served) == 100 and min(served) >= 20, served
    assert generated == [8 * n for n in served]


def test_greedy_answers_equal_one_engine_core(server, dp_server, auth):
    """Prompts whose prefixes prefer each replica, sent one at a time (so each goes to the
    replica it prefers): both replicas answer exactly as the one-core server does."""
    with httpx.Client(base_url=dp_server.url, headers=auth, timeout=60) as dp, \
            httpx.Client(base_url=server.url, headers=auth, timeout=60) as one:
        balancer = ReplicaBalancer(2, block_size(dp_server))
        prompts = text_prompts(seed=3, num=8, min_words=25, max_words=35)
        owners = [balancer.preferred(tokenize(dp, p)) for p in prompts]
        assert sorted(set(owners)) == [0, 1], owners
        before = scrape(dp_server)
        answers = [complete(dp, p) for p in prompts]
        served = [a - b for a, b in zip(per_engine(scrape(dp_server), SUCCESS),
                                        per_engine(before, SUCCESS))]
        assert served == [owners.count(0), owners.count(1)]
        assert answers == [complete(one, p) for p in prompts]


def test_requests_sharing_a_prefix_meet_its_cache_on_one_replica(dp_server, auth):
    with httpx.Client(base_url=dp_server.url, headers=auth, timeout=60) as http:
        size = block_size(dp_server)
        text = text_prompts(seed=11, num=1, min_words=120, max_words=120)[0]
        prefix = tokenize(http, text)[:5 * size]  # five full blocks: more than affinity reads
        suffixes = [tokenize(http, s)[:6] for s in text_prompts(seed=5, num=5, min_words=8,
                                                                 max_words=8)]
        owner = ReplicaBalancer(2, size).preferred(prefix)
        before = scrape(dp_server)
        complete(http, prefix + suffixes[0], max_tokens=4)  # fills the owner's prefix cache

        async def rest():
            async with httpx.AsyncClient(base_url=dp_server.url, headers=auth,
                                         timeout=60) as client:
                bodies = [{"prompt": prefix + s, "max_tokens": 4, "temperature": 0}
                          for s in suffixes[1:]]
                return await asyncio.gather(*[client.post("/v1/completions", json=b)
                                              for b in bodies])

        assert [r.status_code for r in asyncio.run(rest())] == [200] * 4
        after = scrape(dp_server)
    served = [a - b for a, b in zip(per_engine(after, SUCCESS), per_engine(before, SUCCESS))]
    hits = [a - b for a, b in zip(per_engine(after, HITS), per_engine(before, HITS))]
    assert served[owner] == 5 and served[1 - owner] == 0, served
    # The four later requests found the whole shared prefix; the other replica nothing.
    assert hits[owner] == 4 * len(prefix) and hits[1 - owner] == 0, hits


def _engine_labels(text: str) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "engine" in sample.labels:
                labels.setdefault(sample.name, set()).add(sample.labels["engine"])
    return labels


PER_ENGINE = ("llmserve:num_requests_running", "llmserve:num_requests_waiting",
              "llmserve:kv_cache_usage_perc", "llmserve:prefix_cache_queries_total", HITS,
              "llmserve:time_to_first_token_seconds_count")


def test_metrics_have_one_series_per_replica(server, dp_server):
    dp = _engine_labels(scrape(dp_server))
    one = _engine_labels(scrape(server))
    for name in PER_ENGINE:
        assert dp.get(name) == {"0", "1"}, name
        assert one.get(name) == {"0"}, name
    assert 'engine="1"' in scrape(dp_server) and 'engine="1"' not in scrape(server)


def test_startup_banner_describes_each_replica(dp_server):
    log = dp_server.log()
    assert "data parallel: 2 engine cores, KV cache 32768 tokens in all" in log, log
    for i in range(2):
        assert re.search(rf"engine {i}: device cpu, pid \d+, KV cache 16384 tokens "
                         rf"\(1024 blocks of 16\)", log), log


def test_a_dead_replica_fails_requests_and_the_server(start_server):
    server = start_server(["--max-model-len", "128", "--kv-cache-memory", str(8 * 2**20),
                           "--data-parallel-size", "2"])
    pid = int(re.search(r"engine 1: device \w+, pid (\d+)", server.log()).group(1))

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            body = {"prompt": "The", "max_tokens": 120, "ignore_eos": True, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as r:
                lines = r.aiter_lines()
                assert (await lines.__anext__()).startswith("data: {")
                os.kill(pid, signal.SIGKILL)
                return [line async for line in lines if line.startswith("data: ")]

    events = asyncio.run(asyncio.wait_for(run(), 30))
    errors = [json.loads(e[6:]) for e in events if '"error"' in e]
    assert errors and "data-parallel replica 1" in errors[0]["error"]["message"], events[-3:]
    assert events[-1] == "data: [DONE]"
    assert server.proc.wait(30) == 1, server.log()
    assert "the engine core died (data-parallel replica 1: engine core process exited" \
        in server.log()


def test_offline_llm_refuses_data_parallelism():
    from llmserve import LLM

    with pytest.raises(ValueError, match=r"data_parallel_size=2 applies to `llmserve serve`"):
        LLM(data_parallel_size=2)


# -- the balancer alone -------------------------------------------------------------------

BLOCK = 16


def ids(first: int, num: int) -> list[int]:
    return list(range(first, first + num))


def test_balancer_prefers_the_replica_of_the_leading_blocks():
    balancer = ReplicaBalancer(4, BLOCK)
    assert balancer.preferred(ids(5, BLOCK - 1)) is None  # no full block
    prefix = ids(5, AFFINITY_BLOCKS * BLOCK)
    owner = balancer.preferred(prefix)
    # Only the first AFFINITY_BLOCKS full blocks count: what follows them does not matter.
    assert all(balancer.preferred(prefix + ids(first, 40)) == owner for first in range(9))
    # Shorter prompts hash the full blocks they have: these go to different replicas.
    assert len({balancer.preferred(ids(first, 2 * BLOCK + 3)) for first in range(40)}) == 4
    assert ReplicaBalancer(4, BLOCK, prefix_affinity=False).preferred(prefix) is None


def test_balancer_keeps_affinity_within_the_slack_then_takes_the_least_loaded():
    balancer = ReplicaBalancer(2, BLOCK)
    prompt = ids(100, 3 * BLOCK)
    owner = balancer.preferred(prompt)
    choices = [balancer.route(prompt) for _ in range(AFFINITY_SLACK + 5)]
    # The owner takes requests until it has AFFINITY_SLACK + 1 more than the other replica;
    # from then on the other replica gets every second one.
    other = 1 - owner
    assert choices == [owner] * (AFFINITY_SLACK + 1) + [other, owner, other, owner]
    assert balancer.num_in_flight[owner] - balancer.num_in_flight[other] == AFFINITY_SLACK + 1


def test_balancer_slack_grows_with_the_load():
    balancer = ReplicaBalancer(2, BLOCK)
    for _ in range(100):  # no full block: least loaded only, so 50 each
        balancer.route([7])
    assert balancer.num_in_flight == [50, 50]
    prompt = ids(1, 2 * BLOCK)
    owner = balancer.preferred(prompt)
    taken = 0
    while balancer.route(prompt) == owner:
        taken += 1
    # 25 % of the least-loaded replica's 50 allows 12.5 more: 13 routed before the spill.
    assert taken == 13


def test_balancer_counts_completions_breaks_ties_by_reports_and_releases():
    balancer = ReplicaBalancer(3, BLOCK)
    balancer.report(0, 4)
    balancer.report(1, 1)
    balancer.report(2, 2)
    assert balancer.route([1, 2], num_completions=3) == 1  # equal loads: fewest reported
    assert balancer.route([1, 2]) == 2
    assert balancer.route([1, 2]) == 0
    assert balancer.num_in_flight == [1, 3, 1]
    balancer.release(1, 3)
    assert balancer.num_in_flight == [1, 0, 1]
    assert balancer.route([3]) == 1


def test_merge_replica_stats_adds_counts_and_averages_usage():
    merged = merge_replica_stats([
        {"num_running": 2, "kv_cache_usage": 0.5, "prefix_cache_hits": 32, "policy_metrics": []},
        {"num_running": 1, "kv_cache_usage": 0.25, "prefix_cache_hits": 16},
    ])
    assert merged == {"num_running": 3, "kv_cache_usage": 0.375, "prefix_cache_hits": 48}
