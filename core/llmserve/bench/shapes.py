"""Standard model shapes and workloads (benchmarks/README.md), built without weight files.

A shape is an HF config; the benchmark writes only that config.json to a temporary folder
and starts the engine with random weights made on the device (``load_format="dummy"``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "llama-8b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001, dtype="bfloat16"),
    "qwen-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645, dtype="bfloat16"),
    # Small enough for a 2-core CPU: the side-by-side CPU comparison uses it.
    "tiny": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=256,
        intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, dtype="float32"),
}


@dataclass(frozen=True)
class Workload:
    shape: str
    kind: str  # "latency", "throughput" or "startup"
    num_prompts: int
    input_len: int
    output_len: int


WORKLOADS: dict[str, Workload] = {
    "latency-8b": Workload("llama-8b", "latency", 1, 128, 256),
    "throughput-8b": Workload("llama-8b", "throughput", 1000, 512, 128),
    "latency-0.5b": Workload("qwen-0.5b", "latency", 1, 128, 256),
    "throughput-0.5b": Workload("qwen-0.5b", "throughput", 1000, 512, 128),
    "startup-8b": Workload("llama-8b", "startup", 1, 16, 1),
    "latency-tiny": Workload("tiny", "latency", 1, 128, 128),
    "throughput-tiny": Workload("tiny", "throughput", 64, 128, 32),
}


def shape_dir(name: str) -> str:
    """A temporary folder holding only the shape's config.json."""
    if name not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {name!r}")
    folder = Path(tempfile.mkdtemp(prefix=f"llmserve-shape-{name}-"))
    (folder / "config.json").write_text(json.dumps(SHAPES[name], indent=1))
    return str(folder)
