"""Synchronous against asynchronous scheduling with speculation, interleaved: engines with
the embedded pair live side by side (fixed KV blocks, so none plans around another's memory)
and take turns over the same batch-1 prompts, round after round, so that a noisy host
slows all of them alike. Prints each engine's median and best tok/s and host time per step,
then (``--python``) cProfile's top functions of one pass of each speculative engine.

    python benchmarks/gpu/spec_async_ab.py [--k 4,8] [--rounds 5] [--tokens 128] [--python]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spec_decode_bench import corpus_prompts, run_batch1, run_throughput  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--k", default="4,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--batches", default="64,256",
                    help="batch sizes whose throughput is also compared, round by round")
    ap.add_argument("--python", action="store_true")
    args = ap.parse_args()

    from llmserve import LLM
    from llmserve.default_model import DEFAULT_MODEL_PATH
    from llmserve.tokenizer import load_tokenizer

    prompts = corpus_prompts(load_tokenizer(str(DEFAULT_MODEL_PATH)))[:args.prompts]
    batches = [int(b) for b in args.batches.split(",") if b]
    seqs = max([16] + batches)
    engines = {"none": LLM(device=args.device, max_model_len=512, max_num_seqs=seqs,
                           num_gpu_blocks_override=4096)}
    for k in (int(k) for k in args.k.split(",")):
        for mode in ("sync", "async"):
            engines[f"draft_model k={k} {mode}"] = LLM(
                device=args.device, max_model_len=512, max_num_seqs=seqs,
                num_gpu_blocks_override=4096, async_scheduling=mode == "async",
                speculative_config={"method": "draft_model", "num_speculative_tokens": k})
    reference = None
    rates: dict[str, list[float]] = {name: [] for name in engines}
    steps: dict[str, float] = {}
    for name, llm in engines.items():
        run_batch1(llm, prompts, args.tokens, args.device)  # compile every shape
        _, tokens = run_batch1(llm, prompts, args.tokens, args.device)
        reference = reference or tokens
        same = sum(a == b for a, b in zip(tokens, reference))
        print(f"{name}: {same}/{len(prompts)} prompts match none's tokens", flush=True)
    for _ in range(args.rounds):
        for name, llm in engines.items():
            stats = llm.llm_engine.core.scheduler.spec_stats
            before = stats.num_drafts if stats is not None else 0
            seconds, _ = run_batch1(llm, prompts, args.tokens, args.device)
            rates[name].append(len(prompts) * args.tokens / seconds)
            num_steps = (stats.num_drafts - before if stats is not None
                         else len(prompts) * args.tokens)
            steps[name] = seconds / max(num_steps, 1)
    throughput: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches}
                                                      for n in engines}
    for _ in range(2):
        for name, llm in engines.items():
            for b in batches:
                throughput[name][b].append(run_throughput(llm, prompts, b, args.tokens,
                                                          args.device))
    print(f"\ncard: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}; "
          f"{args.rounds} rounds of {len(prompts)} prompts x {args.tokens} tokens at batch 1")
    print("| engine | median tok/s | best tok/s | ms per verification (last round) |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} | {max(values):.0f} | "
              f"{steps[name] * 1e3:.2f} |")
    if batches:
        print("\n| engine | " + " | ".join(f"batch {b} tok/s (best of 2)" for b in batches)
              + " |")
        print("|---|" + "---|" * len(batches))
        for name, figures in throughput.items():
            print(f"| {name} | " + " | ".join(f"{max(v):.0f}" for v in figures.values())
                  + " |")
    if args.python:
        for name, llm in engines.items():
            if name == "none":
                continue
            prof = cProfile.Profile()
            prof.enable()
            run_batch1(llm, prompts[:1], args.tokens, args.device)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumtime").print_stats(
                "llmserve", 14)
            print(f"\n=== {name}")
            print("\n".join(line for line in out.getvalue().splitlines()[-20:] if line.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
