"""Where a speculative step's time goes: torch.profiler over one batch-1 generation with the
embedded pair, warm, and the top host-time entries (GPU: ``--device cuda``).

    python benchmarks/gpu/spec_decode_profile.py [--k 4] [--tokens 64] [--method draft_model]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from llmserve import LLM, SamplingParams
from llmserve.default_model import DEFAULT_MODEL_PATH
from llmserve.testing import local_text
from llmserve.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--method", default="draft_model")
    args = ap.parse_args()
    spec = None if args.method == "none" else {"method": args.method,
                                               "num_speculative_tokens": args.k}
    llm = LLM(device=args.device, max_model_len=512, gpu_memory_utilization=0.1,
              speculative_config=spec)
    prompt = {"prompt_token_ids": load_tokenizer(str(DEFAULT_MODEL_PATH)).encode(
        local_text()[5000:6000])[:32]}
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True,
                            detokenize=False)
    for _ in range(2):
        llm.generate(prompt, params, use_tqdm=False)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        llm.generate(prompt, params, use_tqdm=False)
    stats = llm.llm_engine.core.stats()
    print({k: v for k, v in stats.items() if k.startswith("spec")})
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                    max_name_column_width=60))


if __name__ == "__main__":
    main()
