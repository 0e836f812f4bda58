"""Tiny checkpoints with the two tokenizer families grammar engines must handle.

Grammar backends read a model's vocabulary in one of two encodings: byte-level BPE (GPT-2,
Llama-3: every byte is a printable stand-in character, ``Ġ`` for a space) and SentencePiece
with byte fallback (Llama-2: ``▁`` for a space, ``<0x41>`` tokens for bytes the vocabulary
lacks). A backend that misreads either emits text its own grammar never allowed, so both are
built here, trained on a corpus full of JSON so that tokens span punctuation (``":``,
``"},``) the way real vocabularies do. Everything is deterministic and offline.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve.structured_output import VocabInfo
from llmserve.testing import CHAT_TEMPLATE, local_text, make_tiny_model

#: The models every structured-output test runs on: a byte-level BPE and a byte-fallback
#: SentencePiece vocabulary built here, and the embedded default model (byte-level, 4096).
MODEL_NAMES = ("byte_level", "byte_fallback", "default")

#: The grammar backends the core ships.
BACKEND_NAMES = ("xgrammar", "guidance")

#: Vocabulary size of both tokenizers built here.
VOCAB_SIZE = 1000

#: Words outside ASCII: the byte-fallback tokenizer keeps few of their characters, so
#: grammars meet ``<0xNN>`` tokens inside JSON strings.
_NON_ASCII = ["café", "naïve", "Zürich", "señor", "déjà vu", "—", "€", "日本語", "😀", "Ωμέγα"]


def _json_samples(rng: random.Random, count: int) -> list[str]:
    """JSON documents with the shapes the random schemas produce, in varied spacing."""
    words = ["name", "id", "value", "items", "type", "ok", "count", "tags", "data", "a", "b",
             "x", "y", "user", "age", "city", "score", "list"] + _NON_ASCII

    def value(depth: int):
        kind = rng.randrange(7 if depth < 3 else 5)
        if kind == 0:
            return rng.randint(-1000, 100000)
        if kind == 1:
            return round(rng.uniform(-100, 100), rng.randint(0, 4))
        if kind == 2:
            return rng.choice([True, False, None])
        if kind in (3, 4):
            return " ".join(rng.choice(words) for _ in range(rng.randint(0, 3)))
        if kind == 5:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(words): value(depth + 1) for _ in range(rng.randint(0, 4))}

    styles = [dict(), dict(separators=(",", ":")), dict(indent=2), dict(indent=4)]
    return [json.dumps({rng.choice(words): value(1) for _ in range(rng.randint(1, 5))},
                       ensure_ascii=rng.random() < 0.2, **rng.choice(styles))
            for _ in range(count)]


def training_corpus() -> list[str]:
    """English prose, JSON documents, arithmetic and dates: what the tests constrain to."""
    rng = random.Random(1234)
    prose = local_text()[:120_000]
    chunks = [prose[i:i + 2000] for i in range(0, len(prose), 2000)]
    chunks += _json_samples(rng, 600)
    chunks += [f"{rng.randint(0, 999)} {rng.choice('+-*/')} ({rng.randint(0, 99)} * "
               f"{rng.randint(0, 9)})" for _ in range(100)]
    chunks += [f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
               for _ in range(100)]
    return chunks


def byte_level_tokenizer():
    """A GPT-2/Llama-3 style byte-level BPE tokenizer (``ByteLevel`` pre-tokenizer and
    decoder) with ``<unk>``, ``<s>``, ``</s>``, ``<pad>`` at ids 0..3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE,
                                  special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   chat_template=CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)


#: Characters the byte-fallback tokenizer has tokens for; all others fall back to bytes.
_ALPHABET = sorted(set(string.printable) - set(" \t\n\r\x0b\x0c") | {"é", "▁"})

#: The byte tokens of a byte-fallback vocabulary, ids 3..258 as in Llama-2.
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def byte_fallback_tokenizer():
    """A Llama-2 style SentencePiece tokenizer: ``Metaspace`` (``▁``) pre-tokenizer, BPE with
    ``byte_fallback`` and ``<unk>``, ``<s>``, ``</s>`` then ``<0x00>``..``<0xFF>`` first.

    The alphabet is printable ASCII and ``é``, so other characters (most of ``_NON_ASCII``)
    are spelt with byte tokens, as SentencePiece spells rare characters.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    specials = ["<unk>", "<s>", "</s>"]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - len(BYTE_TOKENS),
                                  special_tokens=specials, initial_alphabet=_ALPHABET,
                                  limit_alphabet=len(_ALPHABET),
                                  show_progress=False)
    trainer_tok.train_from_iterator(training_corpus(), trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    learnt = sorted((i, t) for t, i in trained["vocab"].items() if t not in specials)
    vocab = {t: i for i, t in enumerate(specials + BYTE_TOKENS + [t for _, t in learnt])}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)


def make_vocab_model(path: Path, tokenizer, seed: int, vocab_size: int) -> Path:
    """A tiny seeded ``LlamaForCausalLM`` (hidden 64, 2 layers) beside ``tokenizer``, whose
    logits are ``vocab_size`` wide (wider than the tokenizer when the embedding is padded)."""
    return make_tiny_model(path, "LlamaForCausalLM", tokenizer=tokenizer, seed=seed,
                           vocab_size=vocab_size, rope_scaling=None)


@dataclass(frozen=True)
class VocabModel:
    """A checkpoint folder and what grammar backends need to know about its vocabulary."""

    name: str
    path: Path
    tokenizer: Any
    #: Width of the model's logits (``config.json``'s ``vocab_size``).
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    #: Tokens that decode to whitespace only, which a JSON grammar allows almost anywhere.
    whitespace_ids: frozenset[int]

    def vocab_info(self) -> VocabInfo:
        return VocabInfo(self.tokenizer, self.vocab_size, self.eos_token_ids)


def load_vocab_model(name: str, path: Path) -> VocabModel:
    """Read a checkpoint folder's tokenizer (through ``AutoTokenizer``) and logits width."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    config = json.loads((Path(path) / "config.json").read_text())
    whitespace = frozenset(
        i for i in range(len(tokenizer))
        if i not in tokenizer.all_special_ids and _is_blank(tokenizer, i))
    return VocabModel(name, Path(path), tokenizer, config["vocab_size"],
                      (tokenizer.eos_token_id,), whitespace)


def gpt2_byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the other
    bytes for the code points from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + i): b for i, b in enumerate(others)})
    return mapping


def token_bytes(model: VocabModel, token: str) -> bytes:
    """The bytes a vocabulary entry stands for, from the encoding's definition."""
    if model.name == "byte_fallback":
        match = re.fullmatch(r"<0x([0-9A-F]{2})>", token)
        return bytes([int(match.group(1), 16)]) if match else token.replace("▁", " ").encode()
    table = gpt2_byte_decoder()
    return bytes(table[c] for c in token)


def spell(model: VocabModel, text: str) -> list[int]:
    """``text`` as one token per byte (byte-level) or per character, falling back to byte
    tokens (SentencePiece): a valid but non-canonical tokenization, which grammar engines
    must accept like any other."""
    vocab = model.tokenizer.get_vocab()
    if model.name != "byte_fallback":
        to_char = {b: c for c, b in gpt2_byte_decoder().items()}
        return [vocab[to_char[b]] for b in text.encode()]
    ids: list[int] = []
    for ch in text:
        piece = "▁" if ch == " " else ch
        if piece in vocab:
            ids.append(vocab[piece])
        else:
            ids.extend(vocab[f"<0x{b:02X}>"] for b in ch.encode())
    return ids


def _is_blank(tokenizer, token_id: int) -> bool:
    anchor = tokenizer.convert_tokens_to_ids("a")
    text = tokenizer.decode([anchor, token_id])[1:]
    return bool(text) and not text.strip()
