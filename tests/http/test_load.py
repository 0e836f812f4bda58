"""Bounded load: 200 concurrent streaming requests of mixed prompt and output lengths.

Every request must complete with exactly its ``max_tokens`` (``ignore_eos``), and its streamed
text must equal the non-streamed text of the same request (same seed), which the server
computes in a differently composed batch.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

NUM_REQUESTS = 200
TIME_LIMIT_S = 120


def make_requests(seed: int) -> list[dict]:
    from llmserve.testing import local_text

    words = local_text().split()
    rng = random.Random(seed)
    requests = []
    for i in range(NUM_REQUESTS):
        start = rng.randrange(len(words) - 40)
        prompt = " ".join(words[start:start + rng.randint(1, 40)])
        requests.append({"prompt": prompt, "max_tokens": rng.randint(4, 32), "ignore_eos": True,
                         "temperature": rng.choice([0.0, 0.7, 1.0]), "seed": rng.randrange(2**31),
                         "top_p": rng.choice([1.0, 0.9])})
    return requests


async def stream_one(client: httpx.AsyncClient, body: dict) -> tuple[str, int, int]:
    """(text, completion tokens from usage, number of content chunks)."""
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    text, usage, chunks, done = [], None, 0, False
    async with client.stream("POST", "/v1/completions", json=payload) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            assert "error" not in event, event
            if event["choices"]:
                text.append(event["choices"][0]["text"])
                chunks += 1
            if event.get("usage"):
                usage = event["usage"]
    assert done and usage is not None
    return "".join(text), usage["completion_tokens"], chunks


async def run_load(url: str, headers: dict, requests: list[dict]):
    limits = httpx.Limits(max_connections=NUM_REQUESTS * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIME_LIMIT_S,
                                 limits=limits) as client:
        t0 = time.monotonic()
        streamed = await asyncio.gather(*[stream_one(client, b) for b in requests])
        t_stream = time.monotonic() - t0
        t0 = time.monotonic()
        whole = await asyncio.gather(*[client.post("/v1/completions", json=b)
                                       for b in requests])
        t_whole = time.monotonic() - t0
    return streamed, [r.json() for r in whole], t_stream, t_whole


def test_200_concurrent_streams(server, auth):
    requests = make_requests(seed=random.randrange(2**32))
    streamed, whole, t_stream, t_whole = asyncio.run(
        asyncio.wait_for(run_load(server.url, auth, requests), TIME_LIMIT_S))
    mismatches = []
    for body, (text, n_tokens, n_chunks), full in zip(requests, streamed, whole):
        assert n_tokens == body["max_tokens"], (body, n_tokens)
        assert full["usage"]["completion_tokens"] == body["max_tokens"]
        assert full["choices"][0]["finish_reason"] == "length"
        assert 1 <= n_chunks <= body["max_tokens"]
        if text != full["choices"][0]["text"]:
            mismatches.append((body, text, full["choices"][0]["text"]))
    assert not mismatches, mismatches[:3]
    total = sum(b["max_tokens"] for b in requests)
    print(f"\n200 streams: {t_stream:.2f} s ({total / t_stream:.0f} tok/s); "
          f"200 non-streamed: {t_whole:.2f} s")


def test_concurrent_streams_with_async_scheduling(start_server, auth):
    """The same check against a server whose engine core schedules asynchronously (the CUDA
    default): outputs arrive a step late, and must be exactly as complete and consistent."""
    from http_helpers import SERVER_ARGS

    server = start_server(SERVER_ARGS + ["--async-scheduling"])
    requests = make_requests(seed=random.randrange(2**32))[:100]
    streamed, whole, _, _ = asyncio.run(
        asyncio.wait_for(run_load(server.url, auth, requests), TIME_LIMIT_S))
    for body, (text, n_tokens, _), full in zip(requests, streamed, whole):
        assert n_tokens == body["max_tokens"]
        assert full["usage"]["completion_tokens"] == body["max_tokens"]
        assert text == full["choices"][0]["text"], body
