"""Offline latency and throughput runs for llmserve and for HF transformers as the peer."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Optional

import torch

LATENCY_REPEATS = 5


def random_prompts(num: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Skip the first ids, where special tokens usually sit.
    return torch.randint(16, vocab_size, (num, length), generator=g).tolist()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _settle(device: str) -> None:
    """Before a timed run: finish device work, collect garbage and freeze what survives. The
    engine holds one Python object per KV block (131,072 for a tiny model in the 1 GiB CPU
    cache), so a full collection scans ~450k objects for ~0.2 s; one that lands inside a
    few-millisecond run would be measured as that run's latency. Frozen objects are never
    scanned again (``gc.freeze``, as vLLM's engine does after start-up)."""
    _sync(device)
    gc.collect()
    gc.freeze()


def run_llmserve(llm, prompts: list[list[int]], output_len: int, kind: str) -> dict[str, Any]:
    from llmserve.sampling_params import SamplingParams

    engine = llm.llm_engine
    device = engine.core.device.type
    warm = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, detokenize=False)
    llm.generate(prompts[:1], warm, use_tqdm=False)
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True,
                            detokenize=False)
    first = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
    def timed(batch, p):
        _settle(device)
        t0 = time.perf_counter()
        outs = llm.generate(batch, p, use_tqdm=False)
        _sync(device)
        return time.perf_counter() - t0, outs

    # Latency figures are medians of LATENCY_REPEATS runs: a single few-millisecond run on a
    # busy host can take longer for one token than the next run takes for all of them.
    repeats = LATENCY_REPEATS if kind == "latency" else 1
    ttft = statistics.median(timed(prompts[:1], first)[0] for _ in range(repeats))
    runs = [timed(prompts, params) for _ in range(repeats)]
    elapsed = statistics.median(t for t, _ in runs)
    lengths = [len(o.outputs[0].token_ids) for o in runs[-1][1]]
    return _figures(kind, elapsed, ttft, len(prompts[0]), output_len, lengths)


def run_hf_generate(model, prompts: list[list[int]], output_len: int, kind: str,
                    batch_size: int) -> dict[str, Any]:
    device = str(model.device)
    ids = torch.tensor(prompts, device=model.device)

    def gen(batch, n):
        return model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False,
                              max_new_tokens=n, min_new_tokens=n, pad_token_id=0)

    def first_token() -> float:
        t0 = time.perf_counter()
        gen(ids[:1], 1)
        _sync(device)
        return time.perf_counter() - t0

    def all_prompts() -> tuple[float, list[int]]:
        lengths: list[int] = []
        t0 = time.perf_counter()
        for start in range(0, len(prompts), batch_size):
            batch = ids[start:start + batch_size]
            out = gen(batch, output_len)
            lengths += [out.shape[1] - batch.shape[1]] * batch.shape[0]
        _sync(device)
        return time.perf_counter() - t0, lengths

    repeats = LATENCY_REPEATS if kind == "latency" else 1
    with torch.inference_mode():
        gen(ids[:1], 4)
        _sync(device)
        ttft = statistics.median(first_token() for _ in range(repeats))
        runs = [all_prompts() for _ in range(repeats)]
    elapsed = statistics.median(t for t, _ in runs)
    return _figures(kind, elapsed, ttft, len(prompts[0]), output_len, runs[-1][1])


def run_hf_generate_batch(model, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    """HF transformers' continuous batching (``generate_batch``, paged sdpa) as the peer."""
    from transformers import GenerationConfig

    # Random weights rarely hit EOS; any request that does counts as failed in the figures.
    cfg = GenerationConfig(max_new_tokens=output_len, do_sample=False)
    device = str(model.device)
    # Not inference_mode: generate_batch updates its own static tensors in place later.
    with torch.no_grad():
        model.generate_batch(inputs=prompts[:2], generation_config=cfg, progress_bar=False)
        _sync(device)
        t0 = time.perf_counter()
        results = model.generate_batch(inputs=prompts, generation_config=cfg, progress_bar=False)
        _sync(device)
        elapsed = time.perf_counter() - t0
    lengths = [len(r.generated_tokens) for r in results.values()]
    if not any(lengths):
        import sys

        print(f"generate_batch produced no tokens; first result: "
              f"{next(iter(results.values()))!r:.2000}", file=sys.stderr)
    return _figures("throughput", elapsed, None, len(prompts[0]), output_len, lengths)


def build_hf_model(config: dict[str, Any], model_dir: Optional[str], dtype: torch.dtype,
                   device: str, attn_implementation: Optional[str] = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_dir is not None and not config.get("_shape"):
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=attn_implementation).to(device).eval()
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type",
                                                           "_shape", "dtype")}
    cfg = AutoConfig.for_model(config["model_type"], **fields)
    cfg.architectures = config["architectures"]
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype,
                                                 attn_implementation=attn_implementation)
    return model.eval()


def _figures(kind: str, elapsed: float, ttft: Optional[float], input_len: int, output_len: int,
             lengths: list[int]) -> dict[str, Any]:
    """Result figures; a request that returned other than ``output_len`` tokens failed."""
    num_prompts, out_tokens = len(lengths), sum(lengths)
    figures = {
        "requests": num_prompts,
        "failed": sum(n != output_len for n in lengths),
        "elapsed_s": round(elapsed, 4),
        "output_tok_s": round(out_tokens / elapsed, 2),
        "total_tok_s": round((out_tokens + num_prompts * input_len) / elapsed, 2),
        "input_len": input_len,
        "output_len": output_len,
    }
    if ttft is not None:
        figures["ttft_ms_median"] = round(ttft * 1e3, 3)
    if kind == "latency" and output_len > 1 and ttft is not None:
        figures["tpot_ms_median"] = round((elapsed - ttft) / (output_len - 1) * 1e3, 3)
    return figures
