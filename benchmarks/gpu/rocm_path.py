"""The AMD plugin's code path end to end on an NVIDIA GPU, forced with LLMSERVE_PLATFORM=rocm.

For each CDNA architecture the platform can assume (LLMSERVE_ROCM_ARCH=gfx942, gfx950):

- ``kernels``: the platform's layer ops and the ``triton_rocm`` attention backend, launched
  with that architecture's tiles, against the torch reference in bf16;
- ``engine``: an engine on a tiny random Llama: the platform, backend, op table, dtype,
  graph runner and asynchronous scheduling it runs with (asserted, not just printed);
- ``parity``: the engine against HF transformers bf16, greedy 32 tokens with top-5 logprobs,
  Llama and Qwen2 shapes (``check_and_bench.parity``), with CUDA graphs and async scheduling;

then ``latency-0.5b`` through ``llmserve bench`` with the ROCm path (gfx942 tiles) and with
the CUDA path, HF transformers measured in each call. This runs the tiles, not the HIP
compiler hints (they do not exist on NVIDIA), and its speed says nothing about AMD hardware.

    python benchmarks/gpu/rocm_path.py --out $OUT
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_and_bench import bench, captured_graphs, check_kernels, log, parity  # noqa: E402

ARCHS = ("gfx942", "gfx950")


def force_rocm(arch: str | None) -> None:
    if arch is None:
        os.environ.pop("LLMSERVE_PLATFORM", None)
        os.environ.pop("LLMSERVE_ROCM_ARCH", None)
    else:
        os.environ["LLMSERVE_PLATFORM"] = "rocm"
        os.environ["LLMSERVE_ROCM_ARCH"] = arch


def check_engine(out_dir: str, arch: str) -> dict:
    import torch

    from llmserve import LLM, SamplingParams
    from llmserve.testing import make_tiny_model, train_tokenizer
    from llmserve_amd.arch import KNOWN_ARCHS

    folder = tempfile.mkdtemp()
    make_tiny_model(folder, "LlamaForCausalLM", tokenizer=train_tokenizer(512), hidden_size=512,
                    intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                    num_key_value_heads=2, head_dim=64, max_position_embeddings=2048)
    llm = LLM(folder, gpu_memory_utilization=0.3, max_model_len=1024)
    core = llm.llm_engine.core
    runner = core.runner
    report = dict(
        platform=core.resolved.platform.name, backend=runner.config.attn_backend.name,
        tuning=runner.config.attn_backend.kernel_tuning().name, layer_ops=runner.ops.name,
        dtype=str(core.resolved.config.model.dtype), runner=type(runner).__name__,
        graphs=captured_graphs(runner),
        async_scheduling=core.resolved.config.scheduler.async_scheduling)
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    report["tokens"] = len(out[0].outputs[0].token_ids)
    expected = KNOWN_ARCHS[arch].tuning.name
    assert report["platform"] == "rocm" and report["backend"] == "triton_rocm", report
    assert report["tuning"] == expected and report["layer_ops"] == f"triton-{expected}", report
    assert report["runner"] == "GraphModelRunner" and report["graphs"] > 0, report
    assert report["async_scheduling"] is True and report["tokens"] == 8, report
    del llm, core, runner
    gc.collect()
    torch.cuda.empty_cache()
    log(out_dir, f"engine {arch} " + json.dumps(report))
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--phases", default="kernels,engine,parity,latency-0.5b")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    phases = args.phases.split(",")
    summary = {}
    for arch in ARCHS:
        force_rocm(arch)
        from llmserve_amd.backend import RocmTritonAttention
        from llmserve_amd.platform import RocmPlatform

        for phase in phases:
            try:
                if phase == "kernels":
                    summary[f"kernels {arch}"] = check_kernels(
                        args.out, RocmPlatform, RocmTritonAttention, label=f"kernels {arch}")
                elif phase == "engine":
                    summary[f"engine {arch}"] = check_engine(args.out, arch)
                elif phase == "parity":
                    log(args.out, f"parity under LLMSERVE_PLATFORM=rocm LLMSERVE_ROCM_ARCH={arch}")
                    summary[f"parity {arch}"] = parity(args.out)
            except Exception:  # noqa: BLE001 - report and go on
                log(args.out, f"phase {phase} {arch} failed:\n{traceback.format_exc()}")
    table = []
    if "latency-0.5b" in phases:
        for arch in ("gfx942", None):
            force_rocm(arch)
            for r in bench(args.out, "latency-0.5b", []):
                table.append((arch and f"rocm path ({arch} tiles)" or "cuda path", r))
    force_rocm(None)
    log(args.out, "\n| path | engine | output tok/s | TPOT ms |")
    log(args.out, "|---|---|---|---|")
    for path, r in table:
        log(args.out, f"| {path} | {r['engine']} | {r.get('output_tok_s', '')} | "
                      f"{r.get('tpot_ms_median', '')} |")
    log(args.out, "summary " + json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
