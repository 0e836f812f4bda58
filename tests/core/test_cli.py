"""The ``llmserve generate`` and ``llmserve bench`` commands, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmserve import LLM, SamplingParams


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmserve.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_generate_matches_offline_api(tiny_models):
    path = tiny_models["Qwen2ForCausalLM"]
    proc = run_cli("generate", "--model", path, "--dtype", "float32", "--max-model-len", "128",
                   "--max-tokens", "6", "--temperature", "0", "--json", "Hello there", "abc")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [entry["prompt"] for entry in lines] == ["Hello there", "abc"]
    llm = LLM(path, dtype="float32", max_model_len=128)
    expected = llm.generate(["Hello there", "abc"], SamplingParams(temperature=0, max_tokens=6),
                            use_tqdm=False)
    for entry, out in zip(lines, expected):
        assert entry["token_ids"] == out.outputs[0].token_ids
        assert entry["text"] == out.outputs[0].text


def test_generate_rejects_bad_flag_value(tiny_models):
    proc = run_cli("generate", "--model", tiny_models["LlamaForCausalLM"], "--max-num-seqs", "0",
                   "x")
    assert proc.returncode != 0
    assert "max_num_seqs" in proc.stderr


def test_bench_throughput_on_a_named_shape_with_peer(tmp_path):
    proc = run_cli("bench", "throughput", "--shape", "tiny", "--num-prompts", "4",
                   "--input-len", "16", "--output-len", "8", "--peer", "hf-generate",
                   "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["engine"] for r in results] == ["llmserve", "hf-generate"]
    for r in results:
        assert r["requests"] == 4 and r["failed"] == 0
        assert r["output_tok_s"] > 0 and r["total_tok_s"] > r["output_tok_s"]
        assert r["device"].startswith("cpu")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f.endswith(".json") for f in files)


def test_bench_latency_on_a_model_dir(tiny_models):
    proc = run_cli("bench", "latency", "--model", tiny_models["LlamaForCausalLM"],
                   "--input-len", "8", "--output-len", "8", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["engine"] == "llmserve" and result["requests"] == 1
    assert result["tpot_ms_median"] > 0 and result["failed"] == 0


def test_bench_reports_speculative_decoding(tiny_models):
    model = tiny_models["LlamaForCausalLM"]
    spec = json.dumps({"method": "draft_model", "model": model, "num_speculative_tokens": 3})
    proc = run_cli("bench", "throughput", "--model", model, "--input-len", "8",
                   "--output-len", "17", "--num-prompts", "2", "--dtype", "float32",
                   "--speculative-config", spec)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = result["speculative"]
    assert summary["method"] == "draft_model" and summary["k"] == 3
    # The target drafting for itself accepts everything; only a request's last steps (and
    # the 4-token warm-up) get fewer than 3 drafts.
    assert summary["acceptance_rate"] == 1.0 and summary["acceptance_by_position"][0] == 1.0
    assert summary["mean_accepted_length"] == pytest.approx(
        1 + summary["num_accepted_tokens"] / summary["num_drafts"], abs=1e-4)
    assert 3.5 < summary["mean_accepted_length"] <= 4.0 and summary["num_drafts"] > 0
