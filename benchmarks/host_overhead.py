"""Host overhead of one engine step at N running decode requests, model excluded.

A step is: schedule() + input preparation + forward + logits + sampling + update_from_output +
front-end output processing (detokenization, stop strings). This script runs the real engine
on a tiny checkpoint, times whole steps once every request is decoding, and subtracts the time
spent inside the model's forward, the LM head and the sampler's forward (device work on a GPU).
What remains is the per-step host work that the issue budgets at 2 ms for 256 requests.

Times are the main thread's CPU time (``time.thread_time``) with torch on one thread, so other
processes competing for the 2 cores do not inflate them; wall time is reported beside them.

    python benchmarks/host_overhead.py --num-requests 256 --steps 60 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from llmserve import LLM, SamplingParams
from llmserve.bench.results import make_result
from llmserve.testing import make_tiny_model, train_tokenizer


class Timed:
    """Wraps a callable and accumulates the CPU time the calling thread spends inside it."""

    def __init__(self, fn):
        self.fn, self.total = fn, 0.0

    def __call__(self, *a, **kw):
        t0 = time.thread_time()
        try:
            return self.fn(*a, **kw)
        finally:
            self.total += time.thread_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--detokenize", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    folder = tempfile.mkdtemp()
    # One layer of width 32: the forward is as cheap as a forward gets, and is subtracted anyway.
    make_tiny_model(folder, tokenizer=train_tokenizer(512), hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    llm = LLM(folder, dtype="float32", max_model_len=512, max_num_seqs=args.num_requests,
              kv_cache_memory=64 * 2**20)
    engine = llm.llm_engine
    runner = engine.core.runner
    fwd = runner.model.forward = Timed(runner.model.forward)
    logits = runner.model.compute_logits = Timed(runner.model.compute_logits)
    sample = runner.sampler.forward = Timed(runner.sampler.forward)

    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.steps + 40,
                            ignore_eos=True, detokenize=args.detokenize, stop=["\n\n\n"])
    for i in range(args.num_requests):
        engine.add_request(str(i), f"request {i} says", params)
    # Warm up until every request has finished its prefill and is decoding.
    for _ in range(5):
        engine.step()
    assert engine.core.scheduler.num_running == args.num_requests

    host_ms, total_ms, wall_ms = [], [], []
    for _ in range(args.steps):
        before = fwd.total + logits.total + sample.total
        w0, t0 = time.perf_counter(), time.thread_time()
        engine.step()
        dt = time.thread_time() - t0
        wall_ms.append((time.perf_counter() - w0) * 1e3)
        device = fwd.total + logits.total + sample.total - before
        total_ms.append(dt * 1e3)
        host_ms.append((dt - device) * 1e3)
    result = make_result(f"host-overhead-{args.num_requests}", "llmserve", "cpu", {
        "running_requests": args.num_requests,
        "detokenize": args.detokenize,
        "steps": args.steps,
        "host_ms_median": round(statistics.median(host_ms), 3),
        "host_ms_p90": round(sorted(host_ms)[int(0.9 * len(host_ms))], 3),
        "step_cpu_ms_median": round(statistics.median(total_ms), 3),
        "step_wall_ms_median": round(statistics.median(wall_ms), 3),
    })
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
