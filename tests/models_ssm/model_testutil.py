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
from transformers import (BambaConfig, BambaForCausalLM, MambaConfig, MambaForCausalLM,
                          Mamba2Config, Mamba2ForCausalLM, NemotronHConfig,
                          NemotronHForCausalLM)

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


# -- the tiny checkpoint of each architecture ---------------------------------------------


def tiny_mamba(path, **config) -> str:
    """Mamba1; ``config`` overrides fields."""
    config = MambaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=16,
                         conv_kernel=4, expand=2, **config)
    torch.manual_seed(0)
    model = MambaForCausalLM(config).eval()
    randomize_(model)
    # Mamba1's dt bias is ``dt_proj.bias``: spread it as ``randomize_`` spreads Mamba2's
    # ``dt_bias``, so softplus(dt) spans fast and slow channels. At ``randomize_``'s scale
    # the D skip drowns the scan (B, C and dt barely move the logits); larger x_proj and
    # dt_proj weights make the scan, dt and A change the logprobs by 0.1 and more.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.dt_proj.bias.uniform_(-3, 0.5, generator=gen)
            layer.mixer.x_proj.weight.mul_(6)
            layer.mixer.dt_proj.weight.mul_(8)
    model.save_pretrained(path)
    return str(path)


def tiny_mamba2(path) -> str:
    config = Mamba2Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_heads=8,
                          head_dim=16, n_groups=2, state_size=16, conv_kernel=4, chunk_size=16,
                          expand=2, tie_word_embeddings=True)
    return save_tiny(Mamba2ForCausalLM, config, path)


def tiny_bamba(path) -> str:
    """Layers 0 and 2 attention (partial RoPE over half of each head), 1 and 3 Mamba2, the
    gated MLP in every layer; ``time_step_limit`` tight enough that the clamp binds."""
    config = BambaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, attn_layer_indices=[0, 2], num_attention_heads=4,
                         num_key_value_heads=2, mamba_n_heads=8, mamba_d_head=16,
                         mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4,
                         mamba_chunk_size=16, mamba_expand=2, time_step_limit=(0.05, 1.5),
                         max_position_embeddings=512, tie_word_embeddings=False)
    return save_tiny(BambaForCausalLM, config, path)


def tiny_nemotron_h(path) -> str:
    """Mamba2, attention (no RoPE), squared-ReLU MLP, Mamba2: cache indices differ from layer
    numbers; ``time_step_min`` high enough that HF's step-size floor binds."""
    config = NemotronHConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                             layers_block_type=["linear_attention", "full_attention", "mlp",
                                                "linear_attention"],
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             mamba_num_heads=8, mamba_head_dim=16, n_groups=2,
                             ssm_state_size=16, conv_kernel=4, chunk_size=16,
                             time_step_min=0.05, max_position_embeddings=512)
    return save_tiny(NemotronHForCausalLM, config, path)


#: Architecture -> (checkpoint builder, whether it has paged attention layers).
TINY_CHECKPOINTS = {
    "MambaForCausalLM": (lambda path: tiny_mamba(path, tie_word_embeddings=True), False),
    "Mamba2ForCausalLM": (tiny_mamba2, False),
    "BambaForCausalLM": (tiny_bamba, True),
    "NemotronHForCausalLM": (tiny_nemotron_h, True),
}
