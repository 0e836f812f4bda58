"""``llmserve bench serve``: a load client for any OpenAI-compatible server.

Sends random prompts of a given length at a request rate (Poisson arrivals, or all at once)
and/or under a concurrency cap, streams every answer and measures, per request, the time to
the first token (TTFT), the time per output token after it (TPOT), the gaps between streamed
chunks (ITL) and the end-to-end latency. A request fails on a transport error, a non-200
status, an error event, or, with ``ignore_eos``, fewer or more tokens than asked for.

Prompts are random token ids of a tokenizer (the embedded model's unless another is given),
decoded to text, so the server sees about ``input_len`` tokens; its own count comes back in
``usage`` and is what the totals use.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class RequestResult:
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itls: list[float] = field(default_factory=list)


def random_prompts(tokenizer, num: int, input_len: int, range_ratio: float, seed: int
                   ) -> list[tuple[str, int]]:
    """(text, token count asked for) per prompt; lengths uniform in
    [input_len * (1 - range_ratio), input_len * (1 + range_ratio)]."""
    rng = random.Random(seed)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    lo = max(1, int(input_len * (1 - range_ratio)))
    hi = max(lo, int(input_len * (1 + range_ratio)))
    prompts = []
    for _ in range(num):
        n = rng.randint(lo, hi)
        ids = [rng.choice(vocab) for _ in range(n)]
        prompts.append((tokenizer.decode(ids), n))
    return prompts


def output_lengths(num: int, output_len: int, range_ratio: float, seed: int) -> list[int]:
    rng = random.Random(seed + 1)
    lo = max(1, int(output_len * (1 - range_ratio)))
    hi = max(lo, int(output_len * (1 + range_ratio)))
    return [rng.randint(lo, hi) for _ in range(num)]


async def _one_request(client, url: str, body: dict, is_chat: bool, expect_tokens: Optional[int]
                       ) -> RequestResult:
    result = RequestResult()
    start = time.perf_counter()
    last = None
    chunks = 0
    usage = None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                result.error = f"HTTP {r.status_code}: {text[:200]}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = str(event["error"].get("message", event["error"]))[:200]
                    return result
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") if is_chat \
                        else choice.get("text")
                    if not text:
                        continue
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
                    chunks += 1
    except Exception as exc:  # noqa: BLE001 - any failure is one failed request
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result
    result.latency = time.perf_counter() - start
    if usage is not None:
        result.prompt_tokens = usage.get("prompt_tokens", 0)
        result.output_tokens = usage.get("completion_tokens", chunks)
    else:
        result.output_tokens = chunks
    if last is None:
        result.error = "no tokens streamed"
    elif expect_tokens is not None and result.output_tokens != expect_tokens:
        result.error = f"{result.output_tokens} tokens instead of {expect_tokens}"
    else:
        result.ok = True
    return result


async def run(base_url: str, model: Optional[str], endpoint: str, prompts: list[tuple[str, int]],
              output_lens: list[int], request_rate: float, max_concurrency: Optional[int],
              api_key: Optional[str], ignore_eos: bool, seed: int, timeout_s: float = 600.0
              ) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    is_chat = "chat" in endpoint
    limits = httpx.Limits(max_connections=max_concurrency or len(prompts) or 1,
                          max_keepalive_connections=max_concurrency or 100)
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                 timeout=timeout_s, limits=limits) as client:
        if model is None:
            r = await client.get("/v1/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        rng = random.Random(seed + 2)

        async def launch(i: int) -> RequestResult:
            text, _ = prompts[i]
            body: dict[str, Any] = {"model": model, "max_tokens": output_lens[i],
                                    "stream": True, "temperature": 0.0,
                                    "stream_options": {"include_usage": True}}
            if ignore_eos:
                body["ignore_eos"] = True
            if is_chat:
                body["messages"] = [{"role": "user", "content": text}]
            else:
                body["prompt"] = text
            expect = output_lens[i] if ignore_eos else None
            if semaphore is None:
                return await _one_request(client, endpoint, body, is_chat, expect)
            async with semaphore:
                return await _one_request(client, endpoint, body, is_chat, expect)

        tasks = []
        start = time.perf_counter()
        for i in range(len(prompts)):
            tasks.append(asyncio.ensure_future(launch(i)))
            if request_rate != float("inf") and i + 1 < len(prompts):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    figures = summarize(results, duration)
    figures.update(model=model, endpoint=endpoint, base_url=base_url,
                   request_rate=request_rate if request_rate != float("inf") else "inf",
                   max_concurrency=max_concurrency, input_len_requested=_mean(
                       [n for _, n in prompts]), output_len_requested=_mean(output_lens))
    return figures


def _mean(values) -> float:
    return round(statistics.fmean(values), 2) if values else 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _stats(name: str, seconds: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in seconds]
    return {f"{name}_ms_mean": round(statistics.fmean(ms), 3) if ms else 0.0,
            f"{name}_ms_median": round(_percentile(ms, 50), 3),
            f"{name}_ms_p99": round(_percentile(ms, 99), 3)}


def summarize(results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    figures: dict[str, Any] = {
        "requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": round(duration, 4),
        "request_throughput": round(len(ok) / duration, 3) if duration else 0.0,
        "output_tok_s": round(out_tokens / duration, 2) if duration else 0.0,
        "total_tok_s": round((in_tokens + out_tokens) / duration, 2) if duration else 0.0,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        **_stats("ttft", [r.ttft for r in ok]),
        **_stats("tpot", tpots),
        **_stats("itl", [x for r in ok for x in r.itls]),
        **_stats("e2el", [r.latency for r in ok]),
    }
    if errors:
        figures["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5])
    return figures


def format_report(figures: dict[str, Any]) -> str:
    lines = [
        f"requests: {figures['completed']} completed, {figures['failed']} failed, "
        f"in {figures['duration_s']:.2f} s",
        f"request throughput: {figures['request_throughput']:.2f} req/s",
        f"output tokens/s: {figures['output_tok_s']:.1f}   total tokens/s: "
        f"{figures['total_tok_s']:.1f}",
    ]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"),
                        ("e2el", "E2E latency")):
        lines.append(f"{label:<12} mean {figures[f'{name}_ms_mean']:9.2f} ms   median "
                     f"{figures[f'{name}_ms_median']:9.2f} ms   p99 "
                     f"{figures[f'{name}_ms_p99']:9.2f} ms")
    for error, count in (figures.get("errors") or {}).items():
        lines.append(f"failed x{count}: {error}")
    return "\n".join(lines)
