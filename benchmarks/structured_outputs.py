"""Structured-output overhead: throughput with every request under a JSON schema against the
same batch unconstrained, and the host time spent filling the token mask per step.

With ``--peer hf``, HF transformers' ``generate`` runs the same batch in the same process,
unconstrained and under the same schema through xgrammar's transformers logits processor
(``xgrammar.contrib.hf``), the way a transformers user constrains output.

Random weights (``load_format="dummy"``) on a standard shape: the mask costs the same whatever
the weights. The schema is an array of at least 1000 objects, so no constrained request can
complete inside ``--output-len``: every request of both runs decodes exactly that many tokens
and the two runs differ only by the constraint. Needs a tokenizer whose vocabulary matches the
shape (``--tokenizer``; the tiny shape takes the embedded model's, 4096 tokens).

    python benchmarks/structured_outputs.py --shape tiny --backend xgrammar
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

from llmserve import LLM, SamplingParams
import torch

from llmserve.bench.offline import _settle, _sync, build_hf_model, random_prompts
from llmserve.bench.results import make_result, write_result
from llmserve.bench.shapes import SHAPES, shape_dir
from llmserve.default_model import DEFAULT_MODEL_PATH
from llmserve.models.loader import read_hf_config
from llmserve.structured_output import StructuredOutputsParams
from llmserve.structured_output.backends import MAX_JSON_WHITESPACE

#: Records of a made-up inventory; minItems keeps every request generating to the cap.
SCHEMA = {
    "type": "array", "minItems": 1000,
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "name": {"type": "string", "maxLength": 24},
            "price": {"type": "number"},
            "in_stock": {"type": "boolean"},
            "tags": {"type": "array", "items": {"enum": ["new", "sale", "used", "rare"]},
                     "maxItems": 3},
        },
        "required": ["id", "name", "price", "in_stock", "tags"],
        "additionalProperties": False,
    },
}


def model_dir(shape: str, tokenizer: str) -> str:
    """The shape's config.json beside a tokenizer's files."""
    folder = Path(shape_dir(shape))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tokenizer) / name).exists():
            shutil.copy(Path(tokenizer) / name, folder / name)
    return str(folder)


def timed(llm: LLM, prompts, params) -> tuple[float, list]:
    device = llm.llm_engine.core.device.type
    _settle(device)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    _sync(device)
    return time.perf_counter() - t0, outs


def hf_peer(folder: str, dtype: torch.dtype, device: str, prompts: list[list[int]],
            output_len: int, repeats: int) -> dict:
    """Best-of-``repeats`` throughput of HF ``generate`` on the batch, plain and under
    SCHEMA (xgrammar's logits processor, a fresh one per call as it requires)."""
    import xgrammar as xgr
    from transformers import AutoTokenizer
    from xgrammar.contrib.hf import LogitsProcessor

    model = build_hf_model(dict(read_hf_config(folder), _shape=True), folder, dtype, device)
    info = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(folder),
                                              vocab_size=model.config.vocab_size)
    grammar = xgr.GrammarCompiler(info).compile_json_schema(
        json.dumps(SCHEMA), any_whitespace=True, max_whitespace_cnt=MAX_JSON_WHITESPACE)
    ids = torch.tensor(prompts, device=device)

    def run(constrained: bool, n: int = output_len) -> tuple[float, int]:
        processors = [LogitsProcessor(grammar)] if constrained else None
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                             logits_processor=processors)
        _sync(device)
        return time.perf_counter() - t0, out.shape[1] - ids.shape[1]

    with torch.inference_mode():
        run(False, 4), run(True, 4)
        plain = [run(False) for _ in range(repeats)]
        constrained = [run(True) for _ in range(repeats)]
    if {n for _, n in plain + constrained} != {output_len}:
        raise RuntimeError("an HF run ended before output_len")
    tokens = len(prompts) * output_len
    best_plain, best_constrained = min(t for t, _ in plain), min(t for t, _ in constrained)
    return {"unconstrained_tok_s": round(tokens / best_plain, 1),
            "json_schema_tok_s": round(tokens / best_constrained, 1),
            "ratio": round(best_plain / best_constrained, 3),
            "runs_s": {"unconstrained": [round(t, 4) for t, _ in plain],
                       "json_schema": [round(t, 4) for t, _ in constrained]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", default=str(DEFAULT_MODEL_PATH))
    ap.add_argument("--backend", default="xgrammar")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; best is kept")
    ap.add_argument("--peer", default="none", choices=["none", "hf"],
                    help="hf: also time HF transformers generate, plain and constrained")
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args()

    folder = model_dir(args.shape, args.tokenizer)
    llm = LLM(model=folder, load_format="dummy",
              structured_outputs_backend=args.backend, max_num_seqs=args.batch,
              max_model_len=args.input_len + args.output_len + 16)
    core = llm.llm_engine.core
    vocab = SHAPES[args.shape]["vocab_size"]
    prompts = [{"prompt_token_ids": p}
               for p in random_prompts(args.batch, args.input_len, vocab)]
    plain = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True,
                           detokenize=False)
    constrained = plain.model_copy(update={
        "structured_outputs": StructuredOutputsParams(json=SCHEMA)})
    # Warm-up: compiles the grammar (cached afterwards) and any kernels.
    llm.generate(prompts[:2], constrained.model_copy(update={"max_tokens": 8}), use_tqdm=False)
    llm.generate(prompts[:2], plain.model_copy(update={"max_tokens": 8}), use_tqdm=False)

    runs = {"unconstrained": [], "json_schema": []}
    fill = []
    for _ in range(args.repeats):
        elapsed, outs = timed(llm, prompts, plain)
        runs["unconstrained"].append(elapsed)
        core.grammar_fill_s, core.grammar_fill_steps = 0.0, 0
        elapsed, outs = timed(llm, prompts, constrained)
        runs["json_schema"].append(elapsed)
        fill.append((core.grammar_fill_s, core.grammar_fill_steps))
        lengths = {len(o.outputs[0].token_ids) for o in outs}
        reasons = {o.outputs[0].finish_reason for o in outs}
        if lengths != {args.output_len} or reasons != {"length"}:
            print(f"constrained run ended early: lengths {lengths}, reasons {reasons}",
                  file=sys.stderr)
            return 1
    tokens = args.batch * args.output_len
    best = {k: min(v) for k, v in runs.items()}
    fill_s, fill_steps = min(fill)
    figures = {
        "shape": args.shape, "backend": args.backend, "batch": args.batch,
        "input_len": args.input_len, "output_len": args.output_len,
        "async_scheduling": llm.llm_engine.config.scheduler.async_scheduling,
        "unconstrained_tok_s": round(tokens / best["unconstrained"], 1),
        "json_schema_tok_s": round(tokens / best["json_schema"], 1),
        "ratio": round(best["unconstrained"] / best["json_schema"], 3),
        "mask_fill_ms_per_step": round(1e3 * fill_s / max(1, fill_steps), 3),
        "mask_steps": fill_steps,
        "runs_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "example_output": llm.get_tokenizer().decode(outs[0].outputs[0].token_ids)[:160],
    }
    result = make_result(f"structured-outputs-{args.shape}-{args.backend}", "llmserve",
                         core.device.type, figures)
    print(json.dumps(result, indent=1))
    if args.results_dir:
        print("wrote", write_result(result, args.results_dir))
    rows = [f"| {args.shape} | llmserve ({args.backend}) | batch {args.batch} | "
            f"{figures['unconstrained_tok_s']} | {figures['json_schema_tok_s']} | "
            f"{figures['ratio']:.1%} | {figures['mask_fill_ms_per_step']} ms |"]
    if args.peer == "hf":
        device, dtype = core.device.type, core.resolved.torch_dtype
        del llm, core, outs
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        peer = {"shape": args.shape, "batch": args.batch, "input_len": args.input_len,
                "output_len": args.output_len,
                **hf_peer(folder, dtype, device, [p["prompt_token_ids"] for p in prompts],
                          args.output_len, args.repeats)}
        result = make_result(f"structured-outputs-{args.shape}-xgrammar",
                             "hf-generate", device, peer)
        print(json.dumps(result, indent=1))
        if args.results_dir:
            print("wrote", write_result(result, args.results_dir))
        rows.append(f"| {args.shape} | HF generate (xgrammar processor) | batch {args.batch} | "
                    f"{peer['unconstrained_tok_s']} | {peer['json_schema_tok_s']} | "
                    f"{peer['ratio']:.1%} | |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
