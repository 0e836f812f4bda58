"""Raw HTTP with bad input: every case gets its status and OpenAI's error body naming the
problem; API keys; a full queue."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

LONG_PROMPT = "word " * 400  # far more than max_model_len=256 tokens

#: (id, path, raw body or JSON, expected status, text the message must contain, param)
CASES = [
    ("invalid-json", "/v1/completions", b'{"prompt": "x",', 400, "Invalid JSON", None),
    ("not-an-object", "/v1/completions", b'["prompt"]', 400, "must be a JSON object", None),
    ("empty-body", "/v1/completions", b"", 400, "body is empty", None),
    ("missing-prompt", "/v1/completions", {"max_tokens": 3}, 400, "prompt: field required",
     "prompt"),
    ("missing-messages", "/v1/chat/completions", {"model": "default"}, 400,
     "messages: field required", "messages"),
    ("unknown-model", "/v1/completions", {"model": "gpt-9", "prompt": "x"}, 400,
     "The model `gpt-9` does not exist", "model"),
    ("unknown-field", "/v1/completions", {"prompt": "x", "max_tokenz": 3}, 400,
     "max_tokenz: unknown field", "max_tokenz"),
    ("temperature-range", "/v1/completions", {"prompt": "x", "temperature": 2.5}, 400,
     "temperature: Input should be less than or equal to 2", "temperature"),
    ("top-p-zero", "/v1/completions", {"prompt": "x", "top_p": 0}, 400,
     "top_p: Input should be greater than 0", "top_p"),
    ("n-zero", "/v1/completions", {"prompt": "x", "n": 0}, 400, "n: Input should be greater",
     "n"),
    ("max-tokens-negative", "/v1/completions", {"prompt": "x", "max_tokens": -5}, 400,
     "max_tokens: Input should be greater than or equal to 1", "max_tokens"),
    ("max-tokens-string", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400,
     "max_tokens: Input should be a valid integer", "max_tokens"),
    ("stream-not-bool", "/v1/completions", {"prompt": "x", "stream": "yes"}, 400,
     "stream: Input should be a valid boolean", "stream"),
    ("logprobs-too-many", "/v1/completions", {"prompt": "x", "logprobs": 50}, 400,
     "logprobs: Input should be less than or equal to 20", "logprobs"),
    ("penalty-range", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 3}, 400,
     "presence_penalty", "presence_penalty"),
    ("prompt-too-long", "/v1/completions", {"prompt": LONG_PROMPT}, 400,
     "must be shorter than max_model_len=256", "prompt"),
    ("prompt-plus-max-tokens", "/v1/completions", {"prompt": "hello", "max_tokens": 255}, 400,
     "maximum context length is 256 tokens", "max_tokens"),
    ("chat-too-long", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": LONG_PROMPT}]}, 400, "max_model_len=256",
     "messages"),
    ("empty-prompt", "/v1/completions", {"prompt": ""}, 400, "at least one token", "prompt"),
    ("empty-prompt-list", "/v1/completions", {"prompt": []}, 400, "must not be empty",
     "prompt"),
    ("token-out-of-vocab", "/v1/completions", {"prompt": [1, 99999]}, 400,
     "prompt token ids must be in [0, 4096)", "prompt"),
    ("logit-bias-key", "/v1/completions", {"prompt": "x", "logit_bias": {"abc": 1}}, 400,
     "logit_bias.abc: String should match pattern", "logit_bias.abc"),
    ("logit-bias-vocab", "/v1/completions", {"prompt": "x", "logit_bias": {"50000": 1}}, 400,
     "logit_bias has token ids outside the vocabulary", "logit_bias"),
    ("empty-stop", "/v1/completions", {"prompt": "x", "stop": [""]}, 400,
     "stop.0: String should have at least 1 character", "stop.0"),
    ("negative-token-id", "/v1/completions", {"prompt": [1, -1]}, 400,
     "prompt.1: Input should be greater than or equal to 0", "prompt.1"),
    ("min-tokens-over-max", "/v1/completions", {"prompt": "x", "max_tokens": 2,
                                                "min_tokens": 5}, 400,
     "min_tokens must be in [0, max_tokens=2]", None),
    ("bad-role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]},
     400, "messages.0.role", "messages.0.role"),
    ("content-wrong-type", "/v1/chat/completions", {"messages": [{"role": "user",
                                                                  "content": 5}]},
     400, "messages.0.content", "messages.0.content"),
    ("empty-messages", "/v1/chat/completions", {"messages": []}, 400,
     "messages: List should have at least 1 item", "messages"),
    ("top-logprobs-alone", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
     "top_logprobs needs logprobs=true", "top_logprobs"),
    ("stream-options-without-stream", "/v1/completions",
     {"prompt": "x", "stream_options": {"include_usage": True}}, 400,
     "stream_options is only allowed when stream is true", "stream_options"),
    ("best-of", "/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of must equal n",
     "best_of"),
    ("seed-type", "/v1/completions", {"prompt": "x", "seed": 1.5}, 400,
     "seed: Input should be a valid integer", "seed"),
    ("detokenize-out-of-vocab", "/detokenize", {"tokens": [5, 4096]}, 400,
     "tokens must be in [0, 4096)", "tokens"),
    ("tokenize-missing", "/tokenize", {"model": "default"}, 400, "field required", None),
]


@pytest.mark.parametrize("path, body, status, text, param",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(http, path, body, status, text, param):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert text in error["message"], error
    assert error["code"] == status
    assert error["type"] == "BadRequestError"
    if param is not None:
        assert error["param"] == param, error


def test_unknown_path_and_method(http):
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    r = http.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_server_survives_bad_inputs(http):
    r = http.post("/v1/completions", json={"prompt": "The", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("header, message", [
    (None, "Missing API key"),
    ("Bearer wrong", "Invalid API key"),
    ("Bearer {key}x", "Invalid API key"),
    ("Basic {key}", "Missing API key"),
])
def test_api_key_required_on_the_api(server, auth, header, message):
    key = auth["Authorization"].removeprefix("Bearer ")
    headers = {} if header is None else {"Authorization": header.format(key=key)}
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"),
                         ("POST", "/tokenize")]:
        r = httpx.request(method, server.url + path, headers=headers,
                          json={"prompt": "x"}, timeout=30)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"] == {"message": r.json()["error"]["message"],
                                     "type": "AuthenticationError", "param": None, "code": 401}
        assert message in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_operational_endpoints_need_no_key(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/version").json()["version"]
    assert "llmserve:num_requests_running" in httpx.get(server.url + "/metrics").text
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "llmserve"


def test_api_key_from_environment(start_server):
    server = start_server(["--max-model-len", "64", "--kv-cache-memory", str(4 * 2**20),
                           "--max-num-seqs", "1", "--max-waiting-requests", "1"],
                          env={"LLMSERVE_API_KEY": "env-key"})
    url = server.url
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer env-key"}
                     ).status_code == 200
    assert httpx.get(url + "/v1/models").status_code == 401

    # The same server (one running, one waiting at most) shows a full queue as 503.
    async def flood():
        headers = {"Authorization": "Bearer env-key"}
        body = {"prompt": "The", "max_tokens": 40, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            return await asyncio.gather(*[c.post("/v1/completions", json=body)
                                          for _ in range(8)])

    responses = asyncio.run(flood())
    codes = sorted(r.status_code for r in responses)
    # How many are served depends on when each reaches the core (a second one may arrive
    # while the first still waits); eight at once cannot all fit in one running + one waiting.
    assert set(codes) == {200, 503}, codes
    full = next(r for r in responses if r.status_code == 503)
    assert "waiting queue is full" in full.json()["error"]["message"]
    assert full.json()["error"]["type"] == "ServiceUnavailableError"
    assert full.headers["retry-after"] == "1"
    ok = [r.json() for r in responses if r.status_code == 200]
    assert all(b["usage"]["completion_tokens"] == 40 for b in ok)


def test_tokenize_detokenize_round_trip(http):
    r = http.post("/tokenize", json={"prompt": "The try statement"})
    body = r.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 256
    back = http.post("/detokenize", json={"tokens": body["tokens"]}).json()
    assert back["prompt"] == "The try statement"
    assert json.loads(json.dumps(back))  # plain JSON
