"""The ``llmserve generate`` and ``llmserve bench`` commands, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

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
