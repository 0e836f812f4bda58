"""Helpers for tests and plugin authors: local text, a trained tokenizer, tiny HF models.

Nothing here touches the network: the text is CPython's own ``pydoc_data.topics`` and the
models are built from a config with seeded random weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

#: Special tokens of tokenizers trained here; ids 0..3 in this order.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

#: A minimal chat template for test and default models.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def local_text() -> str:
    """About 465 KB of English that every CPython ships (the help() topics)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def train_tokenizer(vocab_size: int = 2048, text: Optional[str] = None):
    """Train a byte-level BPE tokenizer on ``text`` (default: ``local_text()``).

    Returns a ``transformers.PreTrainedTokenizerFast`` with bos ``<s>``, eos ``</s>``, pad
    ``<pad>``, unk ``<unk>`` and ``CHAT_TEMPLATE``; deterministic for the same inputs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = local_text() if text is None else text
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    chunks = [text[i:i + 4096] for i in range(0, len(text), 4096)]
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


_TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": dict(model_type="llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "MistralForCausalLM": dict(model_type="mistral", sliding_window=None),
    "Qwen2ForCausalLM": dict(model_type="qwen2", tie_word_embeddings=True),
    "Qwen3ForCausalLM": dict(model_type="qwen3", head_dim=24),
}

#: Architectures ``make_tiny_model`` can build.
TINY_ARCHITECTURES = list(_TINY_CONFIGS)


def make_tiny_model(
    path: os.PathLike | str,
    architecture: str = "LlamaForCausalLM",
    tokenizer=None,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Write a tiny, seeded, random-weight HF checkpoint of ``architecture`` to ``path``.

    The directory holds config.json, model.safetensors, generation_config.json and the
    tokenizer files, like a hub download. ``overrides`` change config fields.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(512)
    fields: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    arch_fields = dict(_TINY_CONFIGS[architecture])
    model_type = arch_fields.pop("model_type")
    fields.update(arch_fields)
    fields.update(overrides)
    config = AutoConfig.for_model(model_type, **fields)
    config.architectures = [architecture]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init leaves norms at 1 and biases at 0; perturb them so a loader that skips
    # them is caught.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
