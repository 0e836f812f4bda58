"""The embedded default model: shipped files, HF loading, recorded greedy continuations."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from llmserve.default_model import DEFAULT_MODEL_PATH, GREEDY_SAMPLES

MAX_BYTES = 20 * 1024 * 1024
#: The text the model and tokenizer were trained on (CPython 3.11.7's pydoc_data.topics
#: through llmserve.testing.local_text()); see default_model/README.md.
CORPUS_SHA256 = "71f2ff5d99bdc1f9c48c5c2353ad138201c5ca1c377e0226857ef8fa89b8bcee"
COMMON_WORDS = {"the", "a", "an", "is", "as", "it", "to", "of", "and", "when", "into", "for"}


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_PATH, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT_MODEL_PATH)


def test_folder_files_and_size():
    names = {p.name for p in DEFAULT_MODEL_PATH.iterdir() if p.is_file()}
    for required in ("config.json", "model.safetensors", "generation_config.json",
                     "tokenizer.json", "tokenizer_config.json", "README.md", "__init__.py"):
        assert required in names
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_PATH.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts)
    assert total <= MAX_BYTES, f"default model folder is {total} bytes"
    # Everything the model needs must be covered by core/pyproject.toml's package-data globs.
    shipped = re.compile(r".*\.(json|safetensors|txt|md|py)$")
    assert all(shipped.match(n) for n in names if not n.endswith(".pyc")), names


def test_config_is_llama(hf_model):
    cfg = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["tie_word_embeddings"] is True
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert cfg["max_position_embeddings"] == 2048
    assert hf_model.config.architectures == ["LlamaForCausalLM"]
    assert hf_model.config.vocab_size == 4096
    n_params = sum(p.numel() for p in hf_model.parameters())
    assert 5_000_000 < n_params < 10_000_000
    gen = json.loads((DEFAULT_MODEL_PATH / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"] == 2
    assert gen["bos_token_id"] == cfg["bos_token_id"] == 1


def test_tokenizer_and_chat_template(hf_tokenizer):
    tok = hf_tokenizer
    assert len(tok) == 4096
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>", "</s>", "<pad>", "<unk>")
    assert tok.eos_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<s>user\nhi</s>\n<s>assistant\n"
    # The template lives in tokenizer_config.json (no separate chat_template.jinja to ship).
    assert "chat_template" in json.loads(
        (DEFAULT_MODEL_PATH / "tokenizer_config.json").read_text())


def test_tokenizer_matches_training_recipe(hf_tokenizer):
    """On the Python whose pydoc_data.topics it was trained on, train_tokenizer reproduces it."""
    from llmserve.testing import local_text, train_tokenizer

    text = local_text()
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != CORPUS_SHA256:
        pytest.skip("this Python ships other help() topics than the 3.11.7 training corpus")
    fresh = train_tokenizer(4096, text=text)
    assert fresh.get_vocab() == hf_tokenizer.get_vocab()
    for sample in GREEDY_SAMPLES:
        assert fresh(sample["prompt"])["input_ids"] == sample["prompt_token_ids"]


def _looks_english(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return len(words & COMMON_WORDS) >= 2


@pytest.mark.parametrize("sample", GREEDY_SAMPLES, ids=lambda s: s["prompt"][:16])
def test_hf_greedy_continuation(hf_model, hf_tokenizer, sample):
    ids = hf_tokenizer(sample["prompt"])["input_ids"]
    assert ids == sample["prompt_token_ids"]
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=len(sample["token_ids"]),
                                do_sample=False)
    new = out[0, len(ids):].tolist()
    assert new == sample["token_ids"]
    text = hf_tokenizer.decode(new)
    assert text == sample["text"]
    assert _looks_english(text), text


@pytest.mark.parametrize("sample", GREEDY_SAMPLES, ids=lambda s: s["prompt"][:16])
def test_greedy_continuation_is_in_the_corpus(sample):
    from llmserve.testing import local_text

    corpus = local_text()
    if hashlib.sha256(corpus.encode("utf-8")).hexdigest() != CORPUS_SHA256:
        pytest.skip("this Python ships other help() topics than the 3.11.7 training corpus")
    assert sample["prompt"] + sample["text"] in corpus


def test_llm_default_model_greedy():
    """``LLM()`` with no model serves the embedded model and reproduces HF's greedy text."""
    from llmserve import LLM, SamplingParams

    llm = LLM()
    params = SamplingParams(temperature=0.0, max_tokens=24)
    outputs = llm.generate([s["prompt"] for s in GREEDY_SAMPLES], params)
    assert len(outputs) == len(GREEDY_SAMPLES)
    for out, sample in zip(outputs, GREEDY_SAMPLES):
        assert out.prompt_token_ids == sample["prompt_token_ids"]
        completion = out.outputs[0]
        assert list(completion.token_ids) == sample["token_ids"]
        assert completion.text == sample["text"]
        assert completion.finish_reason == "length"
