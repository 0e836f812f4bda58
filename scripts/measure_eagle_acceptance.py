#!/usr/bin/env python3
"""Measure the acceptance of the shipped EAGLE head (default_model/eagle/) in the engine.

Greedy speculative decoding on the prompts of ``benchmarks/spec_decode_bench.py`` (8 windows
of 32 corpus tokens at fixed random offsets, and 8 English openings that are not in the
corpus), ``--tokens`` new tokens each, one prompt at a time, float32 on the CPU, for each
``--k``; the shipped draft model (``draft_model``) is measured beside it for comparison.
Every run's tokens are checked against decoding without speculation.

    python scripts/measure_eagle_acceptance.py --json /tmp/eagle_acceptance.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(llm, prompts, tokens: int) -> list[list[int]]:
    from llmserve import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True,
                            detokenize=False)
    return [list(llm.generate({"prompt_token_ids": p}, params, use_tqdm=False)[0]
                 .outputs[0].token_ids) for p in prompts]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", default="1,2,4", help="num_speculative_tokens values")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--methods", default="eagle,draft_model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "core"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    from llmserve import LLM
    from llmserve.default_model import DEFAULT_MODEL_PATH
    from llmserve.tokenizer import load_tokenizer
    from spec_decode_bench import OUT_OF_CORPUS, corpus_prompts

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(str(DEFAULT_MODEL_PATH))
    sets = {"corpus": corpus_prompts(tok), "not in corpus": [tok.encode(t)
                                                             for t in OUT_OF_CORPUS]}
    plain = LLM(dtype="float32", max_model_len=512)
    reference = {name: run(plain, prompts, args.tokens) for name, prompts in sets.items()}
    results = {"tokens": args.tokens, "dtype": "float32", "device": "cpu", "runs": []}
    print("| method | k | prompts | acceptance | mean accepted length | exact |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method in args.methods.split(","):
        for k in (int(k) for k in args.k.split(",")):
            llm = LLM(dtype="float32", max_model_len=512, speculative_config={
                "method": method, "num_speculative_tokens": k})
            stats = llm.llm_engine.core.scheduler.spec_stats
            for name, prompts in sets.items():
                before = stats.as_dict()
                t0 = time.perf_counter()
                exact = run(llm, prompts, args.tokens) == reference[name]
                now = stats.as_dict()
                drafts = now["spec_decode_num_drafts"] - before["spec_decode_num_drafts"]
                proposed = (now["spec_decode_num_draft_tokens"]
                            - before["spec_decode_num_draft_tokens"])
                accepted = (now["spec_decode_num_accepted_tokens"]
                            - before["spec_decode_num_accepted_tokens"])
                row = {"method": method, "k": k, "prompts": name, "drafts": drafts,
                       "draft_tokens": proposed, "accepted_tokens": accepted,
                       "acceptance_rate": round(accepted / max(proposed, 1), 4),
                       "mean_accepted_length": round(1 + accepted / max(drafts, 1), 3),
                       "exact": exact, "seconds": round(time.perf_counter() - t0, 1)}
                results["runs"].append(row)
                print(f"| {method} | {k} | {name} | {row['acceptance_rate']:.3f} | "
                      f"{row['mean_accepted_length']:.2f} | {exact} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["exact"] for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
