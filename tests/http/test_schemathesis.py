"""Schemathesis against the server's own OpenAPI document: generated valid and invalid
requests for every operation, bounded in number; none may get a 5xx."""

from __future__ import annotations

import tempfile

import pytest
import schemathesis
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error

# Hypothesis caches into ./.hypothesis by default; keep the checkout clean.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="llmserve-hypothesis-"))

#: Bounds that keep one generated request short on a 2-core CPU (a generated n=128 with
#: max_tokens=200 would be 25k tokens); values past them are still tested by the schema's own
#: limits (rejected with 400) before the clamp applies.
_LIMITS = {"n": 2, "best_of": 2, "max_tokens": 8, "max_completion_tokens": 8, "min_tokens": 8}


@pytest.fixture(scope="session")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def _clamp(body):
    if isinstance(body, dict):
        if "messages" in body and "max_tokens" not in body:
            # Chat without a limit runs to the end of the context.
            body.setdefault("max_completion_tokens", _LIMITS["max_completion_tokens"])
        for key, limit in _LIMITS.items():
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                body[key] = limit


@schema.parametrize()
# No health check is suppressed: generating these requests is fast, even on two busy cores
# (``too_slow``, ``filter_too_much`` and ``data_too_large`` stay quiet), and the only fixture,
# ``auth``, is session-scoped (``function_scoped_fixture`` does not apply). ``deadline=None``
# because a request's time is the model's, not Hypothesis's concern.
@settings(max_examples=30, deadline=None, database=None)
def test_no_server_errors(case, auth):
    _clamp(case.body)
    case.call_and_validate(headers=auth, checks=[not_a_server_error], timeout=60)
