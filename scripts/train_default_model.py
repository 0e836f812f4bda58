#!/usr/bin/env python3
"""Train llmserve's embedded default model (core/llmserve/default_model/).

A small ``LlamaForCausalLM`` trained from scratch on CPython's ``pydoc_data.topics`` (the
``help()`` topics, about 465 KB of English that every CPython ships), with a byte-level BPE
tokenizer trained on the same text by ``llmserve.testing.train_tokenizer``. The model mostly
memorises the text, so its greedy continuations of a passage's opening are recognisable
English from the Python docs rather than noise.

``pydoc_data.topics`` differs between Python versions, so the exact text and tokenizer are
pinned in two steps (see core/llmserve/default_model/README.md):

1. On the machine whose Python defines the data (no GPU needed, seconds)::

       python scripts/train_default_model.py --dump-data DATA_DIR

   writes ``DATA_DIR/corpus.txt`` (``llmserve.testing.local_text()``, UTF-8) and
   ``DATA_DIR/tokenizer/`` (``train_tokenizer(4096)`` with the chat template) and prints the
   corpus's Python version, size and sha256.

2. Anywhere (a GPU is much faster; llmserve need not be importable there)::

       python scripts/train_default_model.py --corpus DATA_DIR/corpus.txt \
           --tokenizer DATA_DIR/tokenizer --out OUT_DIR

   writes config.json, model.safetensors (bfloat16), generation_config.json, the tokenizer
   files and train_log.json (settings, loss curve, final loss, timings) to OUT_DIR.

Without ``--corpus``/``--tokenizer`` the script builds both in-process from this Python's
``pydoc_data.topics`` (one step, for a quick try).

A quick CPU smoke test of the whole pipeline::

    python scripts/train_default_model.py --out /tmp/dm --tiny --steps 5 --device cpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path


def corpus_facts(text: str) -> dict:
    data = text.encode("utf-8")
    return {
        "chars": len(text),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def dump_data(out: Path, vocab_size: int) -> None:
    """Write this Python's corpus and the tokenizer trained on it (step 1)."""
    from llmserve.testing import local_text, train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    text = local_text()
    # newline="" keeps the text byte-exact (no newline translation on any OS).
    with open(out / "corpus.txt", "w", encoding="utf-8", newline="") as f:
        f.write(text)
    tok = train_tokenizer(vocab_size, text=text)
    tok.save_pretrained(out / "tokenizer")
    finalize_files(out / "tokenizer")
    facts = corpus_facts(text)
    facts["python"] = platform.python_version()
    facts["source"] = "pydoc_data.topics via llmserve.testing.local_text()"
    facts["vocab_size"] = len(tok)
    facts["tokens"] = len(tok(text)["input_ids"])
    (out / "corpus.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))


def load_data(args):
    """Return (text, tokenizer, facts) from files or built from this Python."""
    if args.corpus:
        with open(args.corpus, encoding="utf-8", newline="") as f:
            text = f.read()
        meta = Path(args.corpus).with_name("corpus.json")
        facts = json.loads(meta.read_text()) if meta.exists() else {}
    else:
        from llmserve.testing import local_text

        text = local_text()
        facts = {"python": platform.python_version(),
                 "source": "pydoc_data.topics via llmserve.testing.local_text()"}
    facts.update(corpus_facts(text))
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from llmserve.testing import train_tokenizer

        tok = train_tokenizer(args.vocab_size, text=text)
    return text, tok, facts


def build_model(args, tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.tiny:
        shape = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
    else:
        shape = dict(hidden_size=args.hidden, intermediate_size=args.intermediate,
                     num_hidden_layers=args.layers, num_attention_heads=args.heads,
                     num_key_value_heads=args.kv_heads)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
        **shape,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    return model.float()


def finalize_files(out: Path, max_len: int = 2048) -> None:
    """Make the saved folder self-describing and loader-friendly.

    * The chat template goes into tokenizer_config.json (``chat_template``) instead of a
      separate chat_template.jinja, so the folder is only *.json + *.safetensors.
    * ``tokenizer_class`` is the portable ``PreTrainedTokenizerFast`` and
      ``model_max_length`` the model's context.
    * config.json also carries the legacy top-level ``rope_theta`` next to transformers 5's
      ``rope_parameters``, for loaders that read either.
    """
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        tc["chat_template"] = jinja.read_text()
        jinja.unlink()
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["model_max_length"] = max_len
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")
    cfg_path = out / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
        if theta is not None:
            cfg["rope_theta"] = theta
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def steps_within_budget(total: int, step: int, per_step: float, spent: float,
                        budget: float) -> int:
    """The step count that fits ``budget`` seconds at ``per_step`` after ``spent`` (never
    fewer than one more step); announces a reduction."""
    fit = int((budget - spent) / per_step)
    if fit >= total:
        return total
    print(f"{per_step * 1000:.1f} ms/step: reducing steps {total} -> {fit} to fit {budget}s",
          flush=True)
    return max(fit, step + 1)


def train(args) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import GenerationConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, tok, facts = load_data(args)
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    n_tokens = ids.numel()
    print(f"corpus: {facts['bytes']} bytes sha256 {facts['sha256']} "
          f"(python {facts.get('python', '?')}), {n_tokens} tokens, vocab {len(tok)}",
          flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(args, tok).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters on {device}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
        fused=device.type == "cuda")

    gen = torch.Generator().manual_seed(args.seed)
    seq = args.seq_len
    max_start = n_tokens - seq - 1
    ids_dev = ids.to(device)
    offsets = torch.arange(seq + 1, device=device)

    def batch():
        starts = torch.randint(0, max_start + 1, (args.batch,), generator=gen).to(device)
        chunk = ids_dev[starts[:, None] + offsets[None, :]]
        return chunk[:, :-1], chunk[:, 1:]

    total = args.steps
    log = []
    model.train()
    t0 = time.time()
    step = 0
    ema = None
    while step < total:
        lr = lr_at(step, total, args.lr, args.warmup, args.lr_floor)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == total or step == 1:
            lv = loss.item()
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            el = time.time() - t0
            log.append({"step": step, "loss": round(lv, 4), "lr": lr, "elapsed_s": round(el, 1)})
            print(f"step {step}/{total} loss {lv:.4f} lr {lr:.2e} {el:.1f}s", flush=True)
        # Keep the run inside a wall-clock budget: after a few timed steps, shrink the planned
        # step count (and so the cosine schedule) if it would overrun. Recorded in the log.
        if args.time_budget and step in (10, args.calibrate_steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == 10:
                t10 = time.time()
                continue
            total = steps_within_budget(total, step, (time.time() - t10) / (step - 10),
                                        t10 - t0, args.time_budget)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t0

    # Final loss: one pass over the whole corpus in non-overlapping windows (float32 weights,
    # same autocast as training), token-weighted mean.
    model.eval()
    tot_loss, tot_n = 0.0, 0
    with torch.no_grad():
        for s in range(0, n_tokens - 1, seq):
            chunk = ids_dev[s:s + seq + 1]
            if chunk.numel() < 2:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                lg = model(input_ids=chunk[None, :-1]).logits
            tot_loss += F.cross_entropy(lg.float()[0], chunk[1:], reduction="sum").item()
            tot_n += chunk.numel() - 1
    eval_loss = tot_loss / tot_n
    print(f"trained {step} steps in {train_s:.1f}s; full-corpus loss {eval_loss:.4f} "
          f"(ppl {math.exp(eval_loss):.3f})", flush=True)

    model = model.to("cpu", dtype=torch.bfloat16 if args.save_dtype == "bfloat16"
                     else torch.float32)
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(out)
    if args.tokenizer:
        # Ship the exact tokenizer files that were trained in step 1.
        for f in Path(args.tokenizer).iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
    else:
        tok.save_pretrained(out)
    finalize_files(out)

    import torch as _t
    import transformers as _tf
    record = {
        "corpus": facts,
        "tokens": n_tokens,
        "parameters": n_params,
        "shape": {k: getattr(model.config, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
            "tie_word_embeddings")},
        "train": {"steps": step, "planned_steps": args.steps, "batch": args.batch,
                  "seq_len": seq, "tokens_per_step": args.batch * seq,
                  "peak_lr": args.lr, "warmup": args.warmup, "lr_floor": args.lr_floor,
                  "weight_decay": args.weight_decay, "optimizer": "AdamW(0.9, 0.95)",
                  "grad_clip": 1.0, "autocast_bf16": use_bf16, "seed": args.seed,
                  "seconds": round(train_s, 1), "last_batch_loss": log[-1]["loss"]},
        "final_loss_full_corpus": round(eval_loss, 4),
        "device": _t.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "versions": {"python": platform.python_version(), "torch": _t.__version__,
                     "transformers": _tf.__version__},
        "save_dtype": args.save_dtype,
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump-data", metavar="DIR",
                   help="write corpus.txt, corpus.json and tokenizer/ to DIR and exit")
    p.add_argument("--corpus", metavar="FILE", help="training text (default: local_text())")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="saved tokenizer (default: train_tokenizer(--vocab-size))")
    p.add_argument("--out", metavar="DIR", help="where to write the model")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy shape, for smoke tests")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr-floor", type=float, default=0.05, help="final lr / peak lr")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds; if >0, shrink --steps after calibration to fit")
    p.add_argument("--calibrate-steps", type=int, default=50)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads for CPU work (0: torch's default)")
    p.add_argument("--save-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = p.parse_args(argv)
    if args.dump_data:
        dump_data(Path(args.dump_data), args.vocab_size)
        return
    if not args.out:
        p.error("--out is required")
    train(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
    main()
