"""One GPU session: correctness first, then the standard workloads, a table last.

Run on the lent H100 from the repository root (see benchmarks/README.md for the command):

    python benchmarks/gpu/check_and_bench.py --phases check,latency-0.5b,latency-8b,...

Phases:
- ``kernels``: Triton kernels vs the torch reference in bf16 on random inputs; the token
  bitmask also in fp32 on real vocabulary sizes, exact equality, and timed against the torch
  op (a table in microseconds per call).
- ``parity``: engine (bf16, Triton, CUDA graphs) vs HF transformers bf16 on the same random
  weights, Llama and Qwen2 shapes, greedy 32 tokens with top-5 logprobs (a divergence counts only where both tokens sit in each other's top-5).
- a workload name from ``llmserve.bench.shapes.WORKLOADS``: ``llmserve bench`` in a fresh
  process with HF transformers measured in the same process on the same card.

Everything printed is also written under ``--out``; result JSON goes to ``--out/results``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

PEERS = {"latency": "hf-generate", "throughput": "hf-generate-batch", "startup": None}


def log(out_dir: str, line: str) -> None:
    print(line, flush=True)
    with open(os.path.join(out_dir, "log.txt"), "a") as f:
        f.write(line + "\n")


def check_kernels(out_dir: str, platform=None, attention_backend=None, label: str = "kernels"
                  ) -> dict:
    """``platform``'s layer ops and ``attention_backend`` (default: the CUDA platform's and
    the Triton backend) against the torch reference."""
    import torch

    from llmserve.attention.backend import AttentionMetadata
    from llmserve.attention.torch_ref import TorchPagedAttention
    from llmserve.layers.ops import TORCH_OPS

    if platform is None:
        from llmserve_nvidia.platform import CudaPlatform as platform
    if attention_backend is None:
        from llmserve_triton.backend import TritonPagedAttention as attention_backend
    ops = platform.layer_ops()
    backends = {}

    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    report = {}
    x = torch.randn(37, 4096, device=dev, dtype=dt)
    res = torch.randn_like(x)
    w = torch.randn(4096, device=dev, dtype=dt)
    a, ra = ops.rms_norm(x.clone(), w, 1e-5, res.clone())
    b, rb = TORCH_OPS.rms_norm(x.clone(), w, 1e-5, res.clone())
    report["rms_norm_max_err"] = (a.float() - b.float()).abs().max().item()
    g = torch.randn(37, 2 * 14336, device=dev, dtype=dt)
    report["silu_mul_max_err"] = (ops.silu_and_mul(g).float()
                                  - TORCH_OPS.silu_and_mul(g).float()).abs().max().item()
    from llmserve.layers.rotary import RotaryEmbedding

    rope = RotaryEmbedding(128, 4096, 500000.0).to(dev)
    pos = torch.randint(0, 4096, (37,), device=dev)
    q = torch.randn(37, 32, 128, device=dev, dtype=dt)
    k = torch.randn(37, 8, 128, device=dev, dtype=dt)
    qa, ka = ops.rotary(pos, q.clone(), k.clone(), rope.cos_cache, rope.sin_cache)
    qb, kb = TORCH_OPS.rotary(pos, q.clone(), k.clone(), rope.cos_cache, rope.sin_cache)
    report["rotary_max_err"] = max((qa.float() - qb.float()).abs().max().item(),
                                   (ka.float() - kb.float()).abs().max().item())

    # Paged attention on a mixed batch: two prefill chunks with cached context, decodes.
    heads, kv_heads, d, bs = 32, 8, 128, 16
    q_lens = [37, 1, 1, 64, 1, 1, 200]
    ctx_lens = [100, 900, 17, 0, 3000, 5, 0]
    seq_lens = [c + q for c, q in zip(ctx_lens, q_lens)]
    num_blocks = sum(-(-s // bs) for s in seq_lens) + 4
    perm = torch.randperm(num_blocks, device=dev)
    tables, slots, start = [], [], 0
    for s in seq_lens:
        nb = -(-s // bs)
        tables.append(perm[start:start + nb])
        start += nb
    max_nb = max(len(t) for t in tables)
    bt = torch.zeros(len(seq_lens), max_nb, dtype=torch.long, device=dev)
    for i, t in enumerate(tables):
        bt[i, :len(t)] = t
    for i, (c, ql) in enumerate(zip(ctx_lens, q_lens)):
        p = torch.arange(c, c + ql, device=dev)
        slots.append(bt[i, p // bs] * bs + p % bs)
    T = sum(q_lens)
    cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), device=dev)
    md_args = dict(num_tokens=T, num_seqs=len(q_lens), max_query_len=max(q_lens),
                   max_seq_len=max(seq_lens), block_size=bs, query_start_loc=cu,
                   query_lens=torch.tensor(q_lens, device=dev),
                   seq_lens=torch.tensor(seq_lens, device=dev), block_tables=bt,
                   slot_mapping=torch.cat(slots))
    qq = torch.randn(T, heads, d, device=dev, dtype=dt)
    kk = torch.randn(T, kv_heads, d, device=dev, dtype=dt)
    vv = torch.randn(T, kv_heads, d, device=dev, dtype=dt)
    cache = torch.randn(2, num_blocks, bs, kv_heads, d, device=dev, dtype=dt)
    outs = {}
    for name, cls in (("torch", TorchPagedAttention), ("triton", attention_backend)):
        md = AttentionMetadata(**md_args)
        cls.prepare(md)
        c = cache.clone()
        outs[name] = cls(heads, d, kv_heads, d ** -0.5).forward(qq, kk, vv, c, md).float()
        backends[name] = c
    report["attention_max_err"] = (outs["torch"] - outs["triton"]).abs().max().item()
    report["cache_write_equal"] = bool(torch.equal(backends["torch"], backends["triton"]))
    bitmask_rows = check_token_bitmask(ops.apply_token_bitmask, TORCH_OPS.apply_token_bitmask,
                                       dev, cuda_us_per_call)
    report["token_bitmask_equal"] = all(r["equal"] for r in bitmask_rows)
    log(out_dir, f"{label} " + json.dumps(report))
    log_bitmask_table(out_dir, bitmask_rows)
    return report


#: (vocabulary, logits rows, mask rows) of the token-bitmask check: Llama-3 and Qwen2.5
#: vocabularies, every row constrained and a quarter of the rows constrained.
BITMASK_CASES = [(vocab, n, 64) for vocab in (128256, 151936) for n in (64, 256)]


def bitmask_inputs(vocab: int, num_logits_rows: int, num_mask_rows: int, dtype, device,
                   seed: int):
    """Random logits, a mask of random int32 words (so the sign bit is exercised) with one
    all-allowed and one all-forbidden row, and mask rows naming a shuffled subset of the
    logits rows."""
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_logits_rows, vocab, generator=g).to(dtype)
    bitmask = torch.randint(-2 ** 31, 2 ** 31, (num_mask_rows, -(-vocab // 32)), generator=g,
                            dtype=torch.int64).to(torch.int32)
    bitmask[0] = -1
    bitmask[-1] = 0
    rows = torch.randperm(num_logits_rows, generator=g)[:num_mask_rows]
    return logits.to(device), bitmask.to(device), rows.to(device)


def cuda_us_per_call(fn) -> float:
    """Median device time of ``fn()`` in microseconds (``triton.testing.do_bench`` times with
    CUDA events and clears the L2 cache between calls)."""
    from triton.testing import do_bench

    return 1e3 * do_bench(fn, return_mode="median")


def check_token_bitmask(triton_op, torch_op, device, us_per_call) -> list[dict]:
    """One row per case and dtype: whether the Triton op's result equals the torch op's
    exactly, how many entries it forbade, and each op's ``us_per_call`` on the same inputs
    (re-applying a mask in place changes nothing, so repeated calls time the same work)."""
    import torch

    out = []
    cases = [(case, dtype) for case in BITMASK_CASES for dtype in ("bfloat16", "float32")]
    for seed, ((vocab, n, m), dtype) in enumerate(cases):
        logits, bitmask, rows = bitmask_inputs(vocab, n, m, getattr(torch, dtype), device, seed)
        got, expected = logits.clone(), logits.clone()
        triton_op(got, bitmask, rows)
        torch_op(expected, bitmask, rows)
        out.append(dict(
            vocab=vocab, logits_rows=n, mask_rows=m, dtype=dtype,
            equal=bool(torch.equal(got, expected)),
            forbidden=int((got == float("-inf")).sum()),
            triton_us=round(us_per_call(lambda: triton_op(got, bitmask, rows)), 2),
            torch_us=round(us_per_call(lambda: torch_op(expected, bitmask, rows)), 2)))
    return out


def log_bitmask_table(out_dir: str, rows: list[dict]) -> None:
    log(out_dir, "\n| token bitmask | logits rows | mask rows | dtype | equal | forbidden | "
                 "triton µs | torch µs | speedup |")
    log(out_dir, "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        log(out_dir, f"| vocab {r['vocab']} | {r['logits_rows']} | {r['mask_rows']} | "
                     f"{r['dtype']} | {r['equal']} | {r['forbidden']} | {r['triton_us']} | "
                     f"{r['torch_us']} | {r['torch_us'] / r['triton_us']:.2f}x |")


#: Model configs of the parity phases: HF architecture -> config overrides.
PARITY_MODELS = {"LlamaForCausalLM": {}, "Qwen2ForCausalLM": {}}
#: ``parity-window``: Mistral with a sliding window shorter than most prompts, on a cache
#: small enough that blocks freed behind the window are reused.
WINDOW_MODELS = {"MistralForCausalLM": {"sliding_window": 200}}


def captured_graphs(runner) -> int:
    """How many decode graphs a ``GraphModelRunner`` captured (0 for an eager runner)."""
    return sum(len(s.graphs) for s in getattr(runner, "graph_sets", {}).values())


def parity(out_dir: str, dtype: str = "bfloat16", models=None, **engine_kwargs) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from llmserve import LLM, SamplingParams
    from llmserve.testing import make_tiny_model, train_tokenizer

    tok = train_tokenizer(512)
    report = {}
    for arch, overrides in (models or PARITY_MODELS).items():
        folder = tempfile.mkdtemp()
        make_tiny_model(folder, arch, tokenizer=tok, hidden_size=1024, intermediate_size=2816,
                        num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4,
                        max_position_embeddings=4096, head_dim=64, **overrides)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(4, 512, (n,), generator=g).tolist()
                   for n in (1, 7, 16, 33, 100, 250, 513, 1000)]
        llm = LLM(folder, dtype=dtype, max_model_len=2048,
                  **({"gpu_memory_utilization": 0.5} | engine_kwargs))
        params = SamplingParams(temperature=0, max_tokens=32, logprobs=5, ignore_eos=True)
        ours = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
        graphs = captured_graphs(llm.llm_engine.core.runner)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).cuda().eval()
        matched, diverged_ok, bad, max_lp_err = 0, 0, 0, 0.0
        with torch.no_grad():
            for prompt, mine in zip(prompts, ours):
                ids = torch.tensor([prompt], device="cuda")
                past, tokens = None, []
                for t in range(32):
                    out = hf(ids, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    lp = torch.log_softmax(out.logits[0, -1].float(), -1)
                    top = torch.topk(lp, 5)
                    ref = int(top.indices[0])
                    got = mine.token_ids[t]
                    if got != ref:
                        ours_top = [tid for tid, v in mine.logprobs[t].items()
                                    if v.rank is not None and v.rank <= 5]
                        if got in top.indices.tolist() and ref in ours_top:
                            diverged_ok += 1
                        else:
                            bad += 1
                        break
                    max_lp_err = max(max_lp_err, abs(mine.logprobs[t][got].logprob
                                                     - top.values[0].item()))
                    ids = torch.tensor([[ref]], device="cuda")
                else:
                    matched += 1
        report[arch] = dict(prompts=len(prompts), identical=matched,
                            near_tie_divergence=diverged_ok, mismatches=bad,
                            max_logprob_err=round(max_lp_err, 4), cuda_graphs=graphs)
        del hf
        torch.cuda.empty_cache()
    log(out_dir, f"parity {json.dumps(dict(dtype=dtype, **engine_kwargs))} " + json.dumps(report))
    return report


def profile_decode(out_dir: str, shape: str = "llama-8b", steps: int = 64) -> dict:
    """Where a batch-1 decode step's time goes: GPU kernel time by kernel, and how much of
    the wall time the GPU is busy at all (the rest is host work and launch gaps)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from llmserve import LLM, SamplingParams
    from llmserve.bench.shapes import shape_dir

    llm = LLM(shape_dir(shape), load_format="dummy", skip_tokenizer_init=True,
              max_model_len=1024)
    prompt = [[16 + i for i in range(128)]]
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True, detokenize=False)
    llm.generate(prompt, params, use_tqdm=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        llm.generate(prompt, params, use_tqdm=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    table = events.table(sort_by="self_cuda_time_total", row_limit=15)
    with open(os.path.join(out_dir, f"profile-{shape}.txt"), "w") as f:
        f.write(table)
    report = {"shape": shape, "steps": steps, "wall_ms_per_step": round(wall / steps * 1e3, 3),
              "gpu_busy_ms_per_step": round(gpu_us / 1e3 / steps, 3)}
    log(out_dir, "profile " + json.dumps(report))
    log(out_dir, table)
    return report


def bench(out_dir: str, workload: str, extra: list[str]) -> list[dict]:
    from llmserve.bench.shapes import WORKLOADS

    kind = WORKLOADS[workload].kind
    cmd = [sys.executable, "-m", "llmserve.cli.main", "bench", kind, "--workload", workload,
           "--results-dir", os.path.join(out_dir, "results")] + extra
    if PEERS[kind] and "--peer" not in extra:
        cmd += ["--peer", PEERS[kind]]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log(out_dir, f"$ {' '.join(cmd[1:])}  ({time.time() - t0:.0f} s, rc={proc.returncode})")
    with open(os.path.join(out_dir, f"{workload}.stderr.txt"), "w") as f:
        f.write(proc.stderr)
    if proc.returncode != 0:
        log(out_dir, proc.stderr[-3000:])
        return []
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for r in rows:
        log(out_dir, json.dumps(r))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", default="kernels,parity,latency-0.5b")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--extra", default="", help="extra flags for every bench run")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    table = []
    for phase in args.phases.split(","):
        try:
            if phase == "kernels":
                check_kernels(args.out)
            elif phase == "parity":
                parity(args.out)
            elif phase == "parity-async":
                parity(args.out, async_scheduling=True)
            elif phase == "parity-fp16":
                parity(args.out, dtype="float16")
            elif phase == "parity-window":
                # 40 blocks of 16 hold 640 tokens; the batch needs far more without freeing.
                parity(args.out, models=WINDOW_MODELS, num_gpu_blocks_override=40,
                       max_num_batched_tokens=256)
            elif phase.startswith("profile"):
                _, _, shape = phase.partition(":")
                profile_decode(args.out, shape or "llama-8b")
            else:
                name, _, flags = phase.partition(":")
                extra = args.extra.split() + flags.split("+")
                for r in bench(args.out, name, [e for e in extra if e]):
                    table.append(r)
        except Exception:  # noqa: BLE001 - report and go on to the next phase
            log(args.out, f"phase {phase} failed:\n{traceback.format_exc()}")
    log(args.out, "\n| workload | engine | output tok/s | total tok/s | TPOT ms | startup s |")
    log(args.out, "|---|---|---|---|---|---|")
    for r in table:
        log(args.out, f"| {r['workload']} | {r['engine']} | {r.get('output_tok_s', '')} | "
                      f"{r.get('total_tok_s', '')} | {r.get('tpot_ms_median', '')} | "
                      f"{r.get('startup_s', '')} |")


if __name__ == "__main__":
    main()
