#!/usr/bin/env python3
"""Train the EAGLE head shipped with the embedded default model (default_model/eagle/).

An EAGLE-1 head: one Llama decoder layer (no input norm) after ``fc``, which mixes the next
token's embedding with the target's final hidden state; its output goes straight to the
target's LM head. The target (``core/llmserve/default_model``, loaded with HF transformers)
stays frozen, and the head shares its embedding and LM head, so only ``fc`` and the layer are
trained and saved (about 1.8 MB in bfloat16).

Data: the target's corpus and tokenizer, read by ``train_default_model.load_data``. The
target's final (post-norm) hidden states and greedy next tokens are computed once, over
512-token windows at two offsets.

Loss (EAGLE): smooth-L1 between the head's output and the target's next hidden state, plus
``--w-token`` times the cross-entropy of the head's logits against the target's greedy next
token. Serving drafts k tokens by feeding the head's own output back, so training unrolls
``--unroll`` steps the same way ("training-time test", EAGLE-3): step j at position q reads
the output of step j-1 at q-1 and attends to the first step's keys up to q-j plus its own
diagonal of keys from steps 1..j, which is the KV cache the head has when it drafts. Step j's
loss is weighted ``0.8 ** j``.

    python scripts/train_eagle_head.py --out OUT --threads 1 --time-budget 1320

writes config.json, model.safetensors (bfloat16) and train_log.json to OUT.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_default_model import load_data, lr_at, steps_within_budget  # noqa: E402


def target_features(target, ids, window: int, offsets: tuple[int, ...]):
    """(tokens, hidden, greedy) per window: [W, T] ids, [W, T, H] final hidden states and
    [W, T] the target's argmax next token, over windows starting at each offset."""
    import torch

    toks, feats, greedy = [], [], []
    with torch.no_grad():
        for off in offsets:
            for s in range(off, ids.numel() - window + 1, window):
                x = ids[s:s + window][None]
                h = target.model(input_ids=x).last_hidden_state
                toks.append(x[0])
                feats.append(h[0])
                greedy.append(target.lm_head(h[0]).argmax(-1))
    return torch.stack(toks), torch.stack(feats), torch.stack(greedy)


def rope_tables(positions, head_dim: int, theta: float):
    import torch

    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = positions[:, None].float() * inv[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def build_head(cfg: dict):
    """The head as plain torch modules, named like the checkpoint."""
    import torch
    from torch import nn

    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg["head_dim"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(h))

        def forward(self, x):
            x32 = x.float()
            return self.weight * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)

    layer = nn.Module()
    layer.self_attn = nn.Module()
    for name, out in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)):
        setattr(layer.self_attn, name, nn.Linear(h, out, bias=False))
    layer.self_attn.o_proj = nn.Linear(nh * hd, h, bias=False)
    layer.post_attention_layernorm = RMSNorm()
    layer.mlp = nn.Module()
    layer.mlp.gate_proj = nn.Linear(h, inter, bias=False)
    layer.mlp.up_proj = nn.Linear(h, inter, bias=False)
    layer.mlp.down_proj = nn.Linear(inter, h, bias=False)
    head = nn.Module()
    head.fc = nn.Linear(2 * h, h, bias=False)
    head.layers = nn.ModuleList([layer])
    for p in head.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    return head


class Unrolled:
    """The head's forward over whole windows for ``steps`` draft steps (module doc)."""

    def __init__(self, head, cfg: dict, seq: int) -> None:
        import torch

        self.head, self.cfg = head, cfg
        self.nh, self.nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg["head_dim"]
        self.cos, self.sin = rope_tables(torch.arange(seq), self.hd, cfg["rope_theta"])

    def qkv(self, x):
        attn = self.head.layers[0].self_attn
        b, n, _ = x.shape
        q = attn.q_proj(x).view(b, n, self.nh, self.hd).transpose(1, 2)
        k = attn.k_proj(x).view(b, n, self.nkv, self.hd).transpose(1, 2)
        v = attn.v_proj(x).view(b, n, self.nkv, self.hd).transpose(1, 2)
        cos, sin = self.cos[:n], self.sin[:n]
        rep = self.nh // self.nkv
        k = apply_rope(k, cos, sin).repeat_interleave(rep, dim=1)
        return apply_rope(q, cos, sin), k, v.repeat_interleave(rep, dim=1)

    def run(self, embeds, feats, steps: int):
        """Per step j, the head's outputs [B, N, H]; position q of step j drafts the token
        after q + 1 from the output of step j - 1 at q - 1."""
        import torch

        layer = self.head.layers[0]
        b, n, _ = embeds.shape
        scale = self.hd ** -0.5
        idx = torch.arange(n)
        outputs, keys, values = [], [], []
        feat = feats
        for j in range(steps):
            x = self.head.fc(torch.cat([embeds, feat], dim=-1))
            q, k, v = self.qkv(x)
            if j == 0:
                k0, v0 = k, v
            else:
                keys.append(k)
                values.append(v)
            # Keys of step 0 up to q - j, then step i's key at q - j + i (i = 1..j).
            s0 = (q @ k0.transpose(-1, -2)) * scale
            s0 = s0.masked_fill(idx[None, :] > (idx[:, None] - j), float("-inf"))
            diag, vals = [], []
            for i, (ki, vi) in enumerate(zip(keys, values), start=1):
                shift = j - i
                ki = torch.roll(ki, shift, dims=2)
                vals.append(torch.roll(vi, shift, dims=2))
                d = (q * ki).sum(-1, keepdim=True) * scale
                diag.append(d.masked_fill((idx < shift)[:, None], float("-inf")))
            probs = torch.softmax(torch.cat([s0, *diag], dim=-1), dim=-1)
            out = probs[..., :n] @ v0
            for i, vi in enumerate(vals):
                out = out + probs[..., n + i:n + i + 1] * vi
            attn_out = layer.self_attn.o_proj(out.transpose(1, 2).reshape(b, n, -1))
            resid = attn_out + x
            normed = layer.post_attention_layernorm(resid)
            hidden = layer.mlp.down_proj(torch.nn.functional.silu(layer.mlp.gate_proj(normed))
                                         * layer.mlp.up_proj(normed))
            o = hidden + resid
            outputs.append(o)
            feat = torch.cat([torch.zeros_like(o[:, :1]), o[:, :-1]], dim=1)
        return outputs


def head_config(target_cfg: dict) -> dict:
    """A Llama config of one layer with the target's shapes (vLLM's EAGLE-1 layout)."""
    keep = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "rms_norm_eps", "vocab_size", "max_position_embeddings", "hidden_act",
            "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias")
    cfg = {k: target_cfg[k] for k in keep if k in target_cfg}
    cfg["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = (target_cfg.get("rope_parameters") or {}).get("rope_theta",
                                                          target_cfg.get("rope_theta", 1e4))
    cfg.update(architectures=["EagleLlamaForCausalLM"], model_type="llama",
               num_hidden_layers=1, rope_theta=theta,
               rope_parameters={"rope_theta": theta, "rope_type": "default"},
               tie_word_embeddings=True, dtype="bfloat16")
    return dict(sorted(cfg.items()))


def losses(unrolled, embed, lm_head_w, toks, feats, greedy, steps, w_token):
    """(total loss, per-step token accuracy) of a batch of windows."""
    import torch.nn.functional as F

    # Position p pairs token p + 1 with hidden p and predicts hidden p + 1 and greedy p + 1.
    e = embed[toks[:, 1:]]
    outs = unrolled.run(e, feats[:, :-1], steps)
    total, accs = 0.0, []
    n = e.shape[1]
    for j, o in enumerate(outs):
        valid = slice(j, n)
        o = o[:, valid]
        target_h = feats[:, 1:][:, valid]
        target_y = greedy[:, 1:][:, valid]
        logits = o @ lm_head_w.T
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_y.reshape(-1))
        reg = F.smooth_l1_loss(o, target_h)
        total = total + 0.8 ** j * (reg + w_token * ce)
        accs.append(float((logits.argmax(-1) == target_y).float().mean()))
    return total, accs


def train(args) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.tokenizer = args.tokenizer or args.target
    text, tok, facts = load_data(args)
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    target = LlamaForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    toks, feats, greedy = target_features(target, ids, args.seq_len,
                                          (0, args.seq_len // 2))
    feature_s = time.time() - t0
    print(f"features: {toks.shape[0]} windows of {args.seq_len} in {feature_s:.1f}s",
          flush=True)
    cfg = head_config(target.config.to_dict())
    head = build_head(cfg)
    unrolled = Unrolled(head, cfg, args.seq_len)
    embed = target.model.embed_tokens.weight
    lm_head_w = target.lm_head.weight
    n_params = sum(p.numel() for p in head.parameters())
    print(f"head: {n_params} parameters", flush=True)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    total, step, log = args.steps, 0, []
    t0 = time.time()
    while step < total:
        lr = lr_at(step, total, args.lr, args.warmup, args.lr_floor)
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.randint(0, toks.shape[0], (args.batch,), generator=gen)
        loss, accs = losses(unrolled, embed, lm_head_w, toks[pick], feats[pick], greedy[pick],
                            args.unroll, args.w_token)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step in (1, total):
            el = time.time() - t0
            log.append({"step": step, "loss": round(loss.item(), 4),
                        "step_accuracy": [round(a, 4) for a in accs], "lr": lr,
                        "elapsed_s": round(el, 1)})
            print(f"step {step}/{total} loss {loss.item():.4f} acc "
                  f"{' '.join(f'{a:.3f}' for a in accs)} lr {lr:.2e} {el:.1f}s", flush=True)
        if args.time_budget and step in (5, args.calibrate_steps):
            if step == 5:
                t5 = time.time()
                continue
            total = steps_within_budget(total, step, (time.time() - t5) / (step - 5),
                                        t5 - t0, args.time_budget)
    train_s = time.time() - t0

    # Teacher-forced accuracy per draft step over the offset-0 windows (bf16 weights).
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in head.state_dict().items()}
    head.load_state_dict({k: v.float() for k, v in state.items()})
    num_eval = (ids.numel() - args.seq_len) // args.seq_len + 1
    with torch.no_grad():
        sums = [0.0] * args.unroll
        for s in range(0, num_eval, args.batch):
            sl = slice(s, min(s + args.batch, num_eval))
            _, accs = losses(unrolled, embed, lm_head_w, toks[sl], feats[sl], greedy[sl],
                             args.unroll, args.w_token)
            sums = [a + b * (sl.stop - sl.start) for a, b in zip(sums, accs)]
    eval_acc = [round(a / num_eval, 4) for a in sums]
    print(f"trained {step} steps in {train_s:.1f}s; teacher-forced greedy accuracy per "
          f"draft step {eval_acc}", flush=True)

    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    import transformers

    record = {
        "corpus": facts, "tokens": ids.numel(), "parameters": n_params,
        "features": {"windows": toks.shape[0], "seq_len": args.seq_len,
                     "seconds": round(feature_s, 1)},
        "train": {"steps": step, "planned_steps": args.steps, "batch": args.batch,
                  "unroll": args.unroll, "w_token": args.w_token, "peak_lr": args.lr,
                  "warmup": args.warmup, "lr_floor": args.lr_floor, "seed": args.seed,
                  "threads": args.threads, "seconds": round(train_s, 1)},
        "teacher_forced_accuracy_per_step": eval_acc,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=str(ROOT / "core/llmserve/default_model"))
    p.add_argument("--corpus", metavar="FILE", help="training text (default: local_text())")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer (default: --target's)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--out", metavar="DIR", required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--unroll", type=int, default=3, help="draft steps trained per position")
    p.add_argument("--w-token", type=float, default=0.1, help="weight of the token loss")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--lr-floor", type=float, default=0.05, help="final lr / peak lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds; if >0, shrink --steps after calibration to fit")
    p.add_argument("--calibrate-steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: default)")
    train(p.parse_args(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "core"))
    main()
