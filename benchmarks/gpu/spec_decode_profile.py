"""Where a speculative step's time goes, over one warm batch-1 generation with the embedded
pair: torch.profiler's top host-time operators, or (``--python``) cProfile's top Python
functions, which is where a host-bound step spends what the operator view does not show.

    python benchmarks/gpu/spec_decode_profile.py [--runs none,ngram:4,draft_model:8]
        [--tokens 64] [--python]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from llmserve import LLM, SamplingParams
from llmserve.default_model import DEFAULT_MODEL_PATH
from llmserve.testing import local_text
from llmserve.tokenizer import load_tokenizer


def profile_run(method: str, k: int, args) -> None:
    spec = None if method == "none" else {"method": method, "num_speculative_tokens": k}
    llm = LLM(device=args.device, max_model_len=512, gpu_memory_utilization=0.1,
              speculative_config=spec)
    prompt = {"prompt_token_ids": load_tokenizer(str(DEFAULT_MODEL_PATH)).encode(
        local_text()[5000:6000])[:32]}
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True,
                            detokenize=False)
    for _ in range(2):
        llm.generate(prompt, params, use_tqdm=False)
    core = llm.llm_engine.core
    steps_before = core.stats().get("spec_decode_num_drafts", 0)
    t0 = time.perf_counter()
    llm.generate(prompt, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    drafts = core.stats().get("spec_decode_num_drafts", 0) - steps_before
    print(f"\n=== {method} k={k}: {args.tokens / wall:.0f} tok/s unprofiled, {drafts} drafts")
    if args.python:
        prof = cProfile.Profile()
        prof.enable()
        llm.generate(prompt, params, use_tqdm=False)
        prof.disable()
        for key in ("tottime", "cumtime"):
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(key).print_stats(args.rows)
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        llm.generate(prompt, params, use_tqdm=False)
    print({k: v for k, v in core.stats().items() if k.startswith("spec")})
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                    max_name_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", default="draft_model:4",
                    help="comma-separated method:k (none for no speculation)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--python", action="store_true", help="cProfile instead of torch.profiler")
    args = ap.parse_args()
    for run in args.runs.split(","):
        method, _, k = run.partition(":")
        profile_run(method, int(k or 0), args)
        gc.collect()  # the engine's memory back before the next one plans its KV cache
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
