"""One GPU session for the state-space models: correctness first, then speed, a table last.

Run on the lent GPU from the repository root, with llmserve, llmserve-nvidia, llmserve-triton
and llmserve-ssm installed (``pip install --no-deps -e ...``):

    python benchmarks/gpu/ssm_check_and_bench.py --out $OUT --phases kernels,parity,bench

Phases:
- ``kernels``: each Triton SSM kernel against the torch reference on random bf16 inputs at
  model sizes (max abs error), and the time per call of both.
- ``parity``: the engine (bf16, Triton kernels, CUDA graphs) against HF transformers (bf16,
  its torch path) on random weights of a Mamba2 and a hybrid (Bamba) shape: greedy tokens
  with top-5 logprobs; a divergence counts only where both tokens sit in each other's top 5.
- ``decode``: batch-1 decode alone (as in ``bench``), without the peers.
- ``bench``: throughput (random prompts, 128 in / 128 out) of llmserve and of HF
  ``generate`` (batched, same weights shape, same card), and batch-1 decode tok/s with the
  bandwidth ceiling (bytes read per token: weights + one sequence's states).

Everything printed goes to ``--out/log.txt``; JSON to ``--out/results``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import torch

#: Card memory bandwidth (bytes/s) for the decode ceiling: H200 SXM, 4.8 TB/s.
BANDWIDTH = {"NVIDIA H200": 4.8e12, "NVIDIA H100 80GB HBM3": 3.35e12}

#: Benchmark shapes. mamba2-780m: d_model 1536, 48 layers, state 128, head_dim 64.
SHAPES = {
    "mamba2-780m": dict(model_type="mamba2", architectures=["Mamba2ForCausalLM"],
                        vocab_size=50288, hidden_size=1536, num_hidden_layers=48,
                        num_heads=48, head_dim=64, n_groups=1, state_size=128, expand=2,
                        conv_kernel=4, chunk_size=256, tie_word_embeddings=True),
    # A Bamba-style hybrid of ~1.4B: 24 layers, attention at 5, 11, 17, 23.
    "bamba-1.4b": dict(model_type="bamba", architectures=["BambaForCausalLM"],
                       vocab_size=50288, hidden_size=2048, intermediate_size=5632,
                       num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                       attn_layer_indices=[5, 11, 17, 23], mamba_n_heads=64,
                       mamba_d_head=64, mamba_n_groups=1, mamba_d_state=128,
                       mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=256,
                       max_position_embeddings=4096, tie_word_embeddings=False),
}
PARITY_SHAPES = {
    "mamba2-small": dict(SHAPES["mamba2-780m"], hidden_size=768, num_hidden_layers=12,
                         num_heads=24),
    "bamba-small": dict(SHAPES["bamba-1.4b"], hidden_size=1024, intermediate_size=2816,
                        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                        attn_layer_indices=[3, 7], mamba_n_heads=32),
}


def log(out_dir: str, line: str) -> None:
    print(line, flush=True)
    with open(os.path.join(out_dir, "log.txt"), "a") as f:
        f.write(line + "\n")


DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _timed(fn, repeats: int = 20) -> float:
    fn()
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - t0) / repeats


def shrink(shapes: dict) -> dict:
    """``--tiny``: the same shapes cut down, for a dry run of this script on the CPU."""
    small = {}
    for name, shape in shapes.items():
        s = dict(shape, hidden_size=64, num_hidden_layers=min(shape["num_hidden_layers"], 4),
                 vocab_size=512)
        if "num_heads" in s:
            s.update(num_heads=8, head_dim=16, state_size=16, chunk_size=16)
        else:
            s.update(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                     attn_layer_indices=[1, 3], mamba_n_heads=8, mamba_d_head=16,
                     mamba_d_state=16, mamba_chunk_size=16)
        small[name] = s
    return small


# ---- kernels ------------------------------------------------------------------------------


def check_kernels(out_dir: str) -> dict:
    from llmserve_ssm.kernels import TRITON_KERNELS as tri
    from llmserve_ssm.ops.slots import REFERENCE_KERNELS as ref

    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    report = {}
    lengths = [1, 7, 100, 300, 1000, 37]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), device=dev,
                      dtype=torch.int32)
    T, S = sum(lengths), len(lengths)
    idx = torch.tensor([5, 0, 3, 9, 2, 7], device=dev)
    has = torch.tensor([False, True, False, True, True, False], device=dev)
    H, P, G, N, K = 48, 64, 1, 128, 4
    conv_dim = H * P + 2 * G * N

    def compare(name, run_tri, run_ref, states):
        before = [s.clone() for s in states]
        y_t = run_tri()
        after_t = [s.clone() for s in states]
        for s, b in zip(states, before):
            s.copy_(b)
        y_r = run_ref()
        err = (y_t.float() - y_r.float()).abs().max().item()
        serr = max((a.float() - s.float()).abs().max().item() for a, s in zip(after_t, states))
        # Relative to the largest value compared: bf16 rounds values of hundreds by units.
        rel = max(err / max(y_r.float().abs().max().item(), 1e-6),
                  max(serr / max(s.float().abs().max().item(), 1e-6) for s in states))
        for s, b in zip(states, before):
            s.copy_(b)
        t_tri = _timed(run_tri)
        for s, b in zip(states, before):
            s.copy_(b)
        t_ref = _timed(run_ref, repeats=3)
        report[name] = dict(max_err=err, state_max_err=serr, rel_err=rel,
                            triton_us=t_tri * 1e6, torch_us=t_ref * 1e6)
        log(out_dir, f"  {name:24s} err {err:.3g} state err {serr:.3g} rel {rel:.2g} triton "
                     f"{t_tri * 1e6:9.1f} us  torch {t_ref * 1e6:10.1f} us")

    x = torch.randn(T, conv_dim, device=dev, dtype=dt)
    w = torch.randn(conv_dim, K, device=dev, dtype=dt) * 0.3
    b = torch.randn(conv_dim, device=dev, dtype=dt) * 0.1
    conv = torch.randn(12, K - 1, conv_dim, device=dev, dtype=dt)
    compare("conv1d_prefill", lambda: tri.conv1d_prefill(x, w, b, conv, idx, cu, has),
            lambda: ref.conv1d_prefill(x, w, b, conv, idx, cu, has), [conv])
    xd = torch.randn(S, conv_dim, device=dev, dtype=dt)
    compare("conv1d_decode", lambda: tri.conv1d_decode(xd, w, b, conv, idx),
            lambda: ref.conv1d_decode(xd, w, b, conv, idx), [conv])

    xs = torch.randn(T, H, P, device=dev, dtype=dt)
    dts = torch.randn(T, H, device=dev, dtype=dt)
    A = -torch.rand(H, device=dev) * 4 - 0.5
    Bm = torch.randn(T, G, N, device=dev, dtype=dt)
    Cm = torch.randn(T, G, N, device=dev, dtype=dt)
    D = torch.randn(H, device=dev)
    dtb = torch.rand(H, device=dev) - 3
    ssm = torch.randn(12, H, P, N, device=dev, dtype=dt) * 0.1
    compare("ssd_prefill", lambda: tri.ssd_prefill(xs, dts, A, Bm, Cm, 256, D, None, dtb, True,
                                                   ssm, idx, cu, has),
            lambda: ref.ssd_prefill(xs, dts, A, Bm, Cm, 256, D, None, dtb, True, ssm, idx, cu,
                                    has), [ssm])
    xd, dtd = xs[:S].contiguous(), dts[:S].contiguous()
    Bd, Cd = Bm[:S].contiguous(), Cm[:S].contiguous()
    compare("ssd_decode", lambda: tri.ssd_decode(xd, dtd, A, Bd, Cd, D, None, dtb, True, ssm,
                                                 idx),
            lambda: ref.ssd_decode(xd, dtd, A, Bd, Cd, D, None, dtb, True, ssm, idx), [ssm])

    dim, N1 = 3072, 16
    u = torch.randn(T, dim, device=dev, dtype=dt)
    delta = torch.randn(T, dim, device=dev, dtype=dt)
    A1 = -torch.rand(dim, N1, device=dev) * 4 - 0.5
    B1 = torch.randn(T, N1, device=dev, dtype=dt)
    C1 = torch.randn(T, N1, device=dev, dtype=dt)
    D1 = torch.randn(dim, device=dev)
    z1 = torch.randn(T, dim, device=dev, dtype=dt)
    db = torch.rand(dim, device=dev) - 3
    ssm1 = torch.randn(12, dim, N1, device=dev, dtype=dt) * 0.1
    compare("selective_scan_prefill",
            lambda: tri.selective_scan_prefill(u, delta, A1, B1, C1, D1, z1, db, True, ssm1,
                                               idx, cu, has),
            lambda: ref.selective_scan_prefill(u, delta, A1, B1, C1, D1, z1, db, True, ssm1,
                                               idx, cu, has), [ssm1])
    compare("selective_scan_decode",
            lambda: tri.selective_scan_decode(u[:S], delta[:S], A1, B1[:S], C1[:S], D1, z1[:S],
                                              db, True, ssm1, idx),
            lambda: ref.selective_scan_decode(u[:S], delta[:S], A1, B1[:S], C1[:S], D1, z1[:S],
                                              db, True, ssm1, idx), [ssm1])
    return report


# ---- parity -------------------------------------------------------------------------------


def _save_random(shape: dict, path: str, seed: int = 0) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in shape.items() if k not in ("model_type", "architectures")}
    cfg = AutoConfig.for_model(shape["model_type"], **fields)
    cfg.architectures = shape["architectures"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.uniform_(-1, 1)
            elif name.endswith("dt_bias"):
                p.uniform_(-3, 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() >= 2:
                p.normal_(0, 0.02 if "embed" in name or "lm_head" in name else
                          1.0 / p.shape[-1] ** 0.5)
    model.to(torch.bfloat16).save_pretrained(path)


def _hf_greedy(model, prompt: list[int], new_tokens: int, top: int = 5):
    tokens, tops = [], []
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(torch.tensor([seq], device=DEV), use_cache=False).logits[0, -1]
            lp = torch.log_softmax(logits.float(), -1)
            best = torch.topk(lp, top)
            tokens.append(int(best.indices[0]))
            tops.append((best.indices.tolist(), best.values.tolist()))
            seq.append(tokens[-1])
    return tokens, tops


def check_parity(out_dir: str, shapes: dict, lengths) -> dict:
    from transformers import AutoModelForCausalLM

    from llmserve import LLM, SamplingParams

    report = {}
    new_tokens = 24
    for name, shape in shapes.items():
        path = tempfile.mkdtemp(prefix=f"{name}-")
        _save_random(shape, path)
        g = torch.Generator().manual_seed(11)
        prompts = [torch.randint(16, shape["vocab_size"], (n,), generator=g).tolist()
                   for n in lengths]
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(DEV).eval()
        refs = [_hf_greedy(hf, p, new_tokens) for p in prompts]
        del hf
        _free()
        for mode in ("sync", "async"):
            llm = LLM(path, dtype="bfloat16", max_model_len=1024, max_num_seqs=16,
                      gpu_memory_utilization=0.5, async_scheduling=mode == "async",
                      skip_tokenizer_init=True)
            params = SamplingParams(temperature=0, max_tokens=new_tokens, logprobs=5,
                                    ignore_eos=True)
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
            identical = near_tie = mismatch = 0
            lp_err = 0.0
            for out, (ref_tokens, ref_tops) in zip(outs, refs):
                ours = out.outputs[0]
                ok = True
                for t, (tok, ref_tok) in enumerate(zip(ours.token_ids, ref_tokens)):
                    our_top = {tid: lp.logprob for tid, lp in ours.logprobs[t].items()}
                    if tok != ref_tok:
                        if tok in ref_tops[t][0] and ref_tok in our_top:
                            near_tie += 1
                        else:
                            mismatch += 1
                        ok = False
                        break
                    lp_err = max(lp_err, abs(our_top[tok] - ref_tops[t][1][0]))
                identical += ok
            graphs = len(getattr(llm.llm_engine.core.runner, "graphs", {}))
            report[f"{name}-{mode}"] = dict(identical=identical, near_tie=near_tie,
                                            mismatch=mismatch, max_logprob_err=lp_err,
                                            cuda_graphs=graphs)
            log(out_dir, f"  parity {name:13s} {mode:5s}: {identical} identical, {near_tie} "
                         f"near-ties, {mismatch} mismatches; logprob err {lp_err:.3g}; "
                         f"{graphs} CUDA graphs")
            del llm
            _free()
    return report


# ---- bench --------------------------------------------------------------------------------


def _shape_dir(shape: dict) -> str:
    path = tempfile.mkdtemp(prefix="shape-")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(shape, dtype="bfloat16"), f)
    return path


def batch1_decode_tok_s(llm, prompt) -> float:
    """Decode speed of one request: 1 prompt, 256 new tokens, minus the time to the first
    token; each timed once warm (the first run of a shape compiles kernels), median of 3."""
    from llmserve import SamplingParams

    one = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True, detokenize=False)
    first = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)

    def timed(params) -> float:
        _sync()
        t0 = time.perf_counter()
        llm.generate([prompt], params, use_tqdm=False)
        _sync()
        return time.perf_counter() - t0

    timed(first), timed(one)
    t_first = sorted(timed(first) for _ in range(3))[1]
    t_one = sorted(timed(one) for _ in range(3))[1]
    return 255 / (t_one - t_first)


def decode_only(out_dir: str, shapes: dict) -> dict:
    """Batch-1 decode alone (the ``decode`` phase), for a rerun without the peers."""
    from llmserve import LLM
    from llmserve.bench.offline import random_prompts

    report = {}
    for name, shape in shapes.items():
        llm = LLM(_shape_dir(shape), load_format="dummy", dtype="bfloat16", max_model_len=512,
                  max_num_seqs=256, gpu_memory_utilization=0.85, skip_tokenizer_init=True)
        tok_s = batch1_decode_tok_s(llm, random_prompts(1, 128, shape["vocab_size"])[0])
        report[name] = dict(batch1_decode_tok_s=tok_s,
                            cuda_graphs=len(getattr(llm.llm_engine.core.runner, "graphs", {})))
        log(out_dir, f"  {name}: batch-1 decode {tok_s:.0f} tok/s")
        del llm
        _free()
    return report


def bench(out_dir: str, shapes: dict, num_prompts: int, hf_batch: int) -> dict:
    from llmserve import LLM, SamplingParams
    from llmserve.bench.offline import build_hf_model, random_prompts, run_hf_generate

    report = {}
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    bandwidth = BANDWIDTH.get(card)
    for name, shape in shapes.items():
        path = _shape_dir(shape)
        prompts = random_prompts(num_prompts, 128, shape["vocab_size"])
        llm = LLM(path, load_format="dummy", dtype="bfloat16", max_model_len=512,
                  max_num_seqs=256, gpu_memory_utilization=0.85, skip_tokenizer_init=True)
        core = llm.llm_engine.core
        params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True,
                                detokenize=False)
        llm.generate(prompts[:8], params, use_tqdm=False)
        _sync()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        _sync()
        elapsed = time.perf_counter() - t0
        out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        ours = dict(output_tok_s=out_tokens / elapsed, elapsed_s=elapsed,
                    requests=len(prompts), failed=sum(len(o.outputs[0].token_ids) != 128
                                                      for o in outs))
        decode_tok_s = batch1_decode_tok_s(llm, prompts[0])
        model = core.runner.model
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        plan = core.kv_cache_config
        state_bytes = sum(s.page_size_bytes for s in plan.state_specs)
        kv_bytes_per_token = sum(s.page_size_bytes for s in plan.paged_specs) / 16
        bytes_per_token = weight_bytes + state_bytes + kv_bytes_per_token * 256
        ceiling = bandwidth / bytes_per_token if bandwidth else None
        ours.update(batch1_decode_tok_s=decode_tok_s, weight_bytes=weight_bytes,
                    state_bytes_per_seq=state_bytes, decode_ceiling_tok_s=ceiling,
                    cuda_graphs=len(getattr(core.runner, "graphs", {})),
                    state_slots=plan.num_state_slots, snapshots=plan.num_state_snapshots,
                    kv_blocks=plan.num_blocks)
        del llm, core, model
        _free()
        ceiling_text = f"{ceiling:.0f}" if ceiling else "?"
        log(out_dir, f"  {name}: llmserve {ours['output_tok_s']:.0f} tok/s ({len(prompts)} "
                     f"prompts); batch-1 decode {decode_tok_s:.0f} tok/s (ceiling "
                     f"{ceiling_text}); {ours}")
        report[name] = dict(card=card, llmserve=ours)

        # HF's torch SSD path materialises (batch, chunks, chunk, chunk, heads, state)
        # tensors: batch 64 of 128 tokens asks for 96 GiB, so the peer runs smaller batches.
        hf = build_hf_model(dict(shape), None, torch.bfloat16, DEV)
        peer = run_hf_generate(hf, prompts[:hf_batch * 2], 128, "throughput", hf_batch)
        hf_one = run_hf_generate(hf, prompts[:1], 32, "latency", 1)
        del hf
        _free()
        report[name].update(hf_generate=peer, hf_generate_batch1=hf_one)
        log(out_dir, f"  {name}: llmserve {ours['output_tok_s']:.0f} tok/s ({len(prompts)} "
                     f"prompts), HF generate {peer['output_tok_s']:.0f} tok/s (batch "
                     f"{hf_batch}); batch-1 decode {decode_tok_s:.0f} tok/s (ceiling "
                     f"{ceiling_text}), HF batch-1 TPOT {hf_one.get('tpot_ms_median')} ms")
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_out")
    ap.add_argument("--phases", default="kernels,parity,bench")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny shapes (CPU)")
    args = ap.parse_args()
    shapes = shrink(SHAPES) if args.tiny else SHAPES
    parity_shapes = shrink(PARITY_SHAPES) if args.tiny else PARITY_SHAPES
    lengths = (1, 5, 17, 40) if args.tiny else (1, 5, 17, 64, 100, 250, 600)
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    log(args.out, f"card: {card}; torch {torch.__version__}; "
                  f"{time.strftime('%Y-%m-%d %H:%M')}")
    results = {}
    for phase in args.phases.split(","):
        log(args.out, f"== {phase}")
        t0 = time.time()
        try:
            if phase == "kernels":
                results[phase] = check_kernels(args.out)
                worst = max(r["rel_err"] for r in results[phase].values())
                if worst > 0.05:
                    raise RuntimeError(f"Triton kernels disagree with the reference by {worst}")
            elif phase == "parity":
                results[phase] = check_parity(args.out, parity_shapes, lengths)
            elif phase == "bench":
                results[phase] = bench(args.out, shapes, args.num_prompts, args.hf_batch)
            elif phase == "decode":
                results[phase] = decode_only(args.out, shapes)
        except Exception as exc:  # one phase failing must not lose the others' figures
            import traceback

            log(args.out, f"  {phase} FAILED: {exc!r}\n{traceback.format_exc()}")
            if phase == "kernels":
                # Later phases still measure something true: the engine on the torch kernels.
                os.environ["LLMSERVE_SSM_KERNELS"] = "torch"
                log(args.out, "  later phases use the torch reference kernels")
        log(args.out, f"  ({time.time() - t0:.0f} s)")
        with open(os.path.join(args.out, "results", "ssm.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
