"""Per-tenant counters of the ``fair`` policy in a real server's ``/metrics``: the tenant comes
from the ``X-Tenant`` header, else the OpenAI ``user`` field."""

from __future__ import annotations

import httpx
from http_helpers import metric

TOKENS = "llmserve:scheduler_tenant_tokens_total"
FINISHED = "llmserve:scheduler_tenant_requests_finished_total"


def test_fair_policy_counts_tokens_per_tenant(start_server):
    server = start_server(["--max-model-len", "128", "--kv-cache-memory", str(16 * 2**20),
                           "--scheduling-policy", "fair",
                           "--scheduling-policy-config", '{"weights": {"alice": 2}}'])
    with httpx.Client(base_url=server.url, timeout=60) as http:
        def complete(prompt_ids, headers=None, user=None):
            body = {"prompt": prompt_ids, "max_tokens": 4, "ignore_eos": True,
                    "temperature": 0}
            if user is not None:
                body["user"] = user
            r = http.post("/v1/completions", json=body, headers=headers or {})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 4

        # Distinct prompts, so no prefix-cache hit hides computed tokens.
        complete(list(range(10, 30)), user="alice")
        complete(list(range(40, 50)), headers={"X-Tenant": "bob"}, user="alice")
        complete(list(range(60, 65)))
        text = http.get("/metrics").text
    # Each request computes its prompt and every output token but the last.
    assert metric(text, TOKENS, 'tenant="alice"') == 20 + 3
    assert metric(text, TOKENS, 'tenant="bob"') == 10 + 3
    assert metric(text, TOKENS, 'tenant="default"') == 5 + 3
    assert metric(text, FINISHED, 'tenant="alice"') == 1
    assert metric(text, FINISHED, 'tenant="bob"') == 1
