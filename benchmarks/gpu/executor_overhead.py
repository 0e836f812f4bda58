"""What the worker-process executor costs on one GPU: the same engine with the model in the
engine's process (``uni``) and in one worker process fed through the shared-memory ring
(``mp``), on random weights. Checks that both give the same greedy tokens, then times
batch-1 decode (where a per-step cost shows most) and a batch of prompts.

    python benchmarks/gpu/executor_overhead.py --out DIR [--shapes qwen-0.5b,llama-8b]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch


def one_engine(shape: str, backend: str, args) -> dict:
    from llmserve import LLM, SamplingParams
    from llmserve.bench.offline import random_prompts, run_llmserve
    from llmserve.bench.shapes import SHAPES, shape_dir

    t0 = time.perf_counter()
    llm = LLM(shape_dir(shape), load_format="dummy", dtype="bfloat16", max_model_len=1024,
              max_num_seqs=256, num_gpu_blocks_override=args.blocks, seed=0,
              skip_tokenizer_init=True, distributed_executor_backend=backend)
    startup = time.perf_counter() - t0
    vocab = SHAPES[shape]["vocab_size"]
    check = random_prompts(8, 64, vocab, seed=1)
    greedy = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, detokenize=False)
    tokens = [o.outputs[0].token_ids for o in llm.generate(check, greedy, use_tqdm=False)]
    latency = run_llmserve(llm, random_prompts(1, 128, vocab), 256, "latency")
    throughput = run_llmserve(llm, random_prompts(args.batch, 512, vocab, seed=2), 128,
                              "throughput")
    llm.llm_engine.core.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return {"shape": shape, "backend": backend, "startup_s": round(startup, 1),
            "tokens": tokens, "latency": latency, "throughput": throughput}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="qwen-0.5b,llama-8b")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=8192)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for shape in args.shapes.split(","):
        for backend in ("uni", "mp", "uni", "mp"):  # twice, interleaved: a noisy host
            rows.append(one_engine(shape, backend, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "tokens"}), flush=True)
    card = torch.cuda.get_device_name()
    with open(os.path.join(args.out, "executor_overhead.json"), "w") as f:
        json.dump({"card": card, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"\ncard: {card}")
    print(f"{'shape':10} {'backend':7} {'start s':>7} {'b1 tok/s':>9} {'b1 TPOT ms':>10} "
          f"{'batch total tok/s':>17} {'same tokens':>11}")
    ok = True
    for row in rows:
        ref = next(r for r in rows if r["shape"] == row["shape"])
        same = row["tokens"] == ref["tokens"]
        ok &= same
        lat, thr = row["latency"], row["throughput"]
        print(f"{row['shape']:10} {row['backend']:7} {row['startup_s']:7.1f} "
              f"{lat['output_tok_s']:9.1f} {lat['tpot_ms_median']:10.3f} "
              f"{thr['total_tok_s']:17.0f} {str(same):>11}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
