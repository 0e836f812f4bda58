"""Tiny HF checkpoints of the SSM architectures, and the engine-vs-HF checks run on them.

Each tiny model is built with HF's own config and model classes, its parameters moved off
their structured init (so the scan, the conv and the gates all matter), and saved as
safetensors; the engine loads it like any checkpoint. References come from HF in fp32,
recomputing the whole sequence each step (``use_cache=False``: see ``hf_greedy_reference``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from llmserve import LLM
from llmserve.plugin_testing.hf_parity import (assert_greedy_matches, greedy_params,
                                               hf_greedy_reference)

#: Prompt lengths of the parity batch: 1 to 100 tokens, around block and chunk edges.
PARITY_LENGTHS = (1, 2, 3, 5, 15, 16, 17, 33, 64, 100)
VOCAB = 512
NEW_TOKENS = 12


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights with the shapes of a trained SSM: A_log spread over [-1, 1], dt_bias so
    that softplus(dt) spans fast and slow heads, conv biases and norm scales off 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(-1, 1, generator=gen))
            elif name.endswith("dt_bias"):
                p.copy_(torch.empty(p.shape).uniform_(-3, 0.5, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=gen))
            elif name.endswith(".D"):
                p.copy_(torch.empty(p.shape).uniform_(-0.5, 0.5, generator=gen))
            elif "mixer" in name and p.dim() == 2:
                # Mixer projections at unit gain (std 1/sqrt(fan_in)) and more: B, C and dt
                # large enough that the scan, not the D skip, carries the output.
                p.copy_(torch.randn(p.shape, generator=gen) * 2.0 / p.shape[1] ** 0.5)
            elif "embed" in name or "lm_head" in name:
                # Logits with a spread of a few nats, so that small errors move logprobs.
                p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.08)


def save_tiny(model_cls, config, path: Path, seed: int = 0) -> str:
    """Build ``model_cls(config)`` with random weights (``randomize_``) and save it."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize_(model, seed)
    model.save_pretrained(path)
    return str(path)


def parity_prompts(lengths=PARITY_LENGTHS, seed: int = 7) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def assert_hf_parity(model_dir: str, prompts: list[list[int]], new_tokens: int = NEW_TOKENS,
                     **llm_kwargs) -> None:
    """The engine (fp32, all prompts in one batch) decodes each prompt greedily as HF does,
    with top-5 logprobs within 1e-3."""
    refs = hf_greedy_reference(model_dir, prompts, new_tokens=new_tokens, use_cache=False)
    llm = LLM(model_dir, dtype="float32", **llm_kwargs)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy_params(new_tokens))
    for i, out in enumerate(outs):
        assert_greedy_matches(out.outputs[0], refs[i], f"prompt {i} ({len(prompts[i])} tokens)")
