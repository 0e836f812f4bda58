"""The three test models' vocabularies, and that both grammar engines read them as bytes
the way the tokenizer means them (a misread token lets a grammar emit text it forbids)."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from vocab_models import MODEL_NAMES, spell, token_bytes

SAMPLE = '{"name": "café 😀", "x": [1, -2.5e3, null, true]}\n\t日本語 "q\\"'

#: The vocabulary encoding xgrammar must detect for each model.
EXPECTED_VOCAB_TYPE = {"byte_level": "BYTE_LEVEL", "byte_fallback": "BYTE_FALLBACK",
                       "default": "BYTE_LEVEL"}


def test_tokenizers_load_as_fast_tokenizers_with_specials(vocab_models):
    from transformers import PreTrainedTokenizerFast

    for name in MODEL_NAMES:
        tok = vocab_models[name].tokenizer
        assert isinstance(tok, PreTrainedTokenizerFast), name
        assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
        assert tok.eos_token_id == 2 and tok.bos_token_id == 1
        assert vocab_models[name].eos_token_ids == (2,)
        ids = tok.encode(SAMPLE, add_special_tokens=False)
        assert tok.decode(ids) == SAMPLE
        assert len(ids) < len(SAMPLE)  # merges were learnt, not just characters


def test_vocabulary_sizes_and_padding(vocab_models):
    sizes = {n: (len(vocab_models[n].tokenizer), vocab_models[n].vocab_size)
             for n in MODEL_NAMES}
    assert sizes == {"byte_level": (1000, 1000), "byte_fallback": (1000, 1024),
                     "default": (4096, 4096)}
    for name in ("byte_level", "byte_fallback"):
        path = vocab_models[name].path
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            embed = f.get_tensor("model.embed_tokens.weight")
        assert tuple(embed.shape) == (vocab_models[name].vocab_size, 64)
        config = json.loads((path / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["num_hidden_layers"] == 2


def test_byte_level_and_byte_fallback_spellings(vocab_models):
    level = vocab_models["byte_level"].tokenizer
    pieces = level.convert_ids_to_tokens(level.encode(' "x"', add_special_tokens=False))
    assert "".join(pieces) == 'Ġ"x"'

    fallback = vocab_models["byte_fallback"].tokenizer
    assert fallback.convert_ids_to_tokens(list(range(3, 6))) == ["<0x00>", "<0x01>", "<0x02>"]
    pieces = fallback.convert_ids_to_tokens(fallback.encode("a 😀", add_special_tokens=False))
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert pieces[0].startswith("▁")  # Metaspace prepends "▁" to the first word
    assert "<0x0A>" in fallback.convert_ids_to_tokens(fallback.encode("a\nb"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_xgrammar_detects_vocab_type(vocab_models, name):
    import xgrammar as xgr

    model = vocab_models[name]
    info = xgr.TokenizerInfo.from_huggingface(model.tokenizer, vocab_size=model.vocab_size,
                                              stop_token_ids=list(model.eos_token_ids))
    assert info.vocab_type.name == EXPECTED_VOCAB_TYPE[name]
    assert info.add_prefix_space is (name == "byte_fallback")
    assert info.vocab_size == model.vocab_size and info.stop_token_ids == [2]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_both_engines_read_every_token_as_its_bytes(vocab_models, name):
    import llguidance.hf
    import xgrammar as xgr

    model = vocab_models[name]
    tok = model.tokenizer
    xgr_vocab = xgr.TokenizerInfo.from_huggingface(
        tok, vocab_size=model.vocab_size, stop_token_ids=[2]).decoded_vocab
    llg = llguidance.hf.from_tokenizer(tok, n_vocab=model.vocab_size, eos_token=2)
    assert llg.vocab_size == len(xgr_vocab) == model.vocab_size
    special = set(tok.all_special_ids)
    checked = 0
    for token, token_id in tok.get_vocab().items():
        if token_id in special:
            continue
        want = token_bytes(model, token)
        assert xgr_vocab[token_id] == want, (token_id, token)
        # llguidance marks special tokens with a leading 0xFF byte, so it reads the token of
        # that lone byte (which UTF-8 text never contains) as empty and never allows it.
        assert llg.decode_bytes([token_id]) == (b"" if want == b"\xff" else want), token
        checked += 1
    assert checked == len(tok) - len(special)
    ids = llg.tokenize_str(SAMPLE)
    assert llg.decode_bytes(ids) == SAMPLE.encode()
    if name != "byte_fallback":  # SentencePiece puts "▁" before the first word, llguidance not
        assert ids == tok.encode(SAMPLE, add_special_tokens=False)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spelling_decodes_to_the_text(vocab_models, name):
    model = vocab_models[name]
    ids = spell(model, SAMPLE)
    assert len(ids) >= len(SAMPLE)
    assert b"".join(token_bytes(model, t)
                    for t in model.tokenizer.convert_ids_to_tokens(ids)) == SAMPLE.encode()
