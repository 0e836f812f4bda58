"""The draft model shipped next to the default model (default_model/draft/) for speculative
decoding: files, size, vocabulary and special ids shared with the target, and agreement."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from llmserve.default_model import DEFAULT_MODEL_PATH, DRAFT_MODEL_PATH

MAX_WEIGHT_BYTES = 3_000_000
CORPUS_SHA256 = "71f2ff5d99bdc1f9c48c5c2353ad138201c5ca1c377e0226857ef8fa89b8bcee"
#: Draft/target greedy top-1 agreement on the first 512 corpus tokens (one window, 512
#: positions compared), HF float32 on CPU: measured 0.9199 (471 of 512; draft/README.md).
MIN_AGREEMENT_FIRST_512 = 0.88


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_folder_files_and_size():
    names = {p.name for p in DRAFT_MODEL_PATH.iterdir() if p.is_file()}
    assert {"config.json", "generation_config.json", "model.safetensors",
            "README.md"} <= names, names
    # Only what core/pyproject.toml's package-data globs for draft/ ship.
    assert all(n.endswith((".json", ".safetensors", ".md")) for n in names), names
    size = (DRAFT_MODEL_PATH / "model.safetensors").stat().st_size
    assert size <= MAX_WEIGHT_BYTES, f"draft model.safetensors is {size} bytes"


def test_config_and_ids_match_the_target():
    draft = json.loads((DRAFT_MODEL_PATH / "config.json").read_text())
    target = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())
    assert draft["architectures"] == ["LlamaForCausalLM"]
    assert draft["dtype"] == "bfloat16"
    for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert draft[key] == target[key], key
    assert (draft["vocab_size"], draft["bos_token_id"], draft["eos_token_id"],
            draft["pad_token_id"]) == (4096, 1, 2, 3)
    gen = json.loads((DRAFT_MODEL_PATH / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 3)
    # The draft is smaller than the target and keeps its context length.
    assert draft["num_hidden_layers"] < target["num_hidden_layers"]
    assert draft["max_position_embeddings"] == target["max_position_embeddings"]


def test_hf_loads_and_agrees_with_the_target():
    from transformers import AutoTokenizer

    from llmserve.testing import local_text

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_PATH)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 3)
    draft = _load(DRAFT_MODEL_PATH)
    assert draft.config.vocab_size == len(tok) == 4096
    n_params = sum(p.numel() for p in draft.parameters())
    assert n_params < 1_500_000

    text = local_text()
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != CORPUS_SHA256:
        pytest.skip("this Python ships other help() topics than the 3.11.7 training corpus")
    ids = torch.tensor([tok(text)["input_ids"][:512]])
    target = _load(DEFAULT_MODEL_PATH)
    with torch.no_grad():
        t_top = target(input_ids=ids).logits.argmax(-1)
        d_top = draft(input_ids=ids).logits.argmax(-1)
    agreement = (t_top == d_top).float().mean().item()
    assert agreement >= MIN_AGREEMENT_FIRST_512, agreement
