"""``llmserve serve --speculative-config``: the same completions as without speculation,
streamed too, and vLLM's speculative-decoding counters in ``/metrics``."""

from __future__ import annotations

import json

import httpx
from http_helpers import API_KEY, SERVER_ARGS, metric

from llmserve.default_model import DEFAULT_MODEL_PATH

PROMPTS = ["The \"while\" statement is used for", "Assert statements are a convenient way to"]


def _completion(url: str, prompt: str, stream: bool = False) -> str:
    body = {"prompt": prompt, "max_tokens": 30, "temperature": 0, "stream": stream}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if not stream:
        r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]
    text = []
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers,
                      timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(text)


def test_speculative_server_answers_as_the_plain_one(server, start_server):
    # The target drafting for itself: every draft is accepted, so the counters are exact.
    spec = json.dumps({"method": "draft_model", "num_speculative_tokens": 3,
                       "model": str(DEFAULT_MODEL_PATH)})
    fast = start_server([*SERVER_ARGS, "--speculative-config", spec])
    for prompt in PROMPTS:
        want = _completion(server.url, prompt)
        assert _completion(fast.url, prompt) == want
        assert _completion(fast.url, prompt, stream=True) == want
    text = httpx.get(fast.url + "/metrics", timeout=30).text
    drafts = metric(text, "llmserve:spec_decode_num_drafts_total")
    proposed = metric(text, "llmserve:spec_decode_num_draft_tokens_total")
    accepted = metric(text, "llmserve:spec_decode_num_accepted_tokens_total")
    assert drafts > 0 and accepted == proposed == 3 * drafts
    for pos in range(3):
        assert metric(text, "llmserve:spec_decode_num_accepted_tokens_per_pos_total",
                      f'position="{pos}"') == drafts
