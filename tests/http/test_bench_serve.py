"""``llmserve bench serve`` against the test server: figures that add up, failures counted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def bench(server, api_key: str, *args: str) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "llmserve.cli.main", "bench", "serve", "--base-url", server.url,
         "--api-key", api_key, *args], capture_output=True, text=True, timeout=180)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr
    return proc.returncode, json.loads(lines[-1]), proc.stderr


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_bench_serve_measures_a_server(server, auth, endpoint, tmp_path):
    key = auth["Authorization"].removeprefix("Bearer ")
    rc, result, report = bench(server, key, "--endpoint", endpoint, "--num-prompts", "12",
                               "--input-len", "16", "--output-len", "8", "--max-concurrency",
                               "4", "--request-rate", "50", "--results-dir", str(tmp_path))
    assert rc == 0, report
    assert result["completed"] == 12 and result["failed"] == 0
    assert result["total_output_tokens"] == 12 * 8  # ignore_eos: exactly --output-len each
    assert result["total_input_tokens"] > 0 and result["model"] == "default"
    for name in ("ttft", "tpot", "itl", "e2el"):
        mean, median, p99 = (result[f"{name}_ms_{s}"] for s in ("mean", "median", "p99"))
        assert 0 < median <= p99 and mean > 0, name
    assert result["ttft_ms_median"] <= result["e2el_ms_median"]
    assert result["output_tok_s"] == pytest.approx(96 / result["duration_s"], rel=0.01)
    assert "TTFT" in report and "req/s" in report
    assert list(tmp_path.glob("*.json"))


def test_bench_serve_counts_failures(server, auth):
    key = auth["Authorization"].removeprefix("Bearer ")
    rc, result, _ = bench(server, key, "--served-model-name", "no-such-model",
                          "--num-prompts", "5", "--input-len", "8", "--output-len", "4")
    assert rc == 1
    assert result["failed"] == 5 and result["completed"] == 0
    (error, count), = result["errors"].items()
    assert count == 5 and "HTTP 400" in error and "does not exist" in error
