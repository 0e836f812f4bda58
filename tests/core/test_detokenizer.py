"""Tokenizer loading and incremental detokenization with stop strings.

Real tokenizers: Mistral-7B's SentencePiece model (shipped by mistral-common; byte fallback,
'▁' spaces), a byte-level BPE trained here, and ByT5 (a Python tokenizer, one token per byte)
for the path that does not use the Rust DecodeStream.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from llmserve.sampling_params import SamplingParams
from llmserve.testing import CHAT_TEMPLATE, local_text
from llmserve.tokenizer import (
    IncrementalDetokenizer,
    apply_chat_template,
    decode_token,
    eos_token_ids,
    load_tokenizer,
)

TEXTS = [
    "Hello world, how are you?",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x**2  # square\n\n\tprint(f(3))\n",
    "emoji 😀🎉 and a family 👨‍👩‍👧 and flags 🇫🇷🇯🇵!",
    "日本語のテキスト、中文文本 龘 𝔘 한국어",
    "naïve café résumé Ångström Straße",
    "  two leading spaces,   three inside, trailing  ",
    "mixed: ascii→unicode ∑∫√ «quotes» — dash … ellipsis",
]
#: Characters outside the SentencePiece vocabulary: they come out as <0xNN> byte tokens.
RARE = ["龘", "𝔘"]


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    """Mistral-7B's tokenizer.model, loaded as a HF LlamaTokenizer through load_tokenizer."""
    import mistral_common

    src = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    d = tmp_path_factory.mktemp("mistral_sp")
    shutil.copy(src, d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return load_tokenizer(str(d))


@pytest.fixture(scope="module")
def byt5_tokenizer():
    from transformers.models.byt5.tokenization_byt5 import ByT5Tokenizer

    return ByT5Tokenizer()


@pytest.fixture(params=["sp", "bpe"])
def fast_tokenizer(request, sp_tokenizer, bpe_tokenizer):
    return {"sp": sp_tokenizer, "bpe": bpe_tokenizer}[request.param]


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


def detok(tok, prompt=(), stream=None, **params):
    return IncrementalDetokenizer(tok, list(prompt), SamplingParams(**params),
                                  use_decode_stream=stream)


def feed(d, ids):
    """Feed ids one per update, collecting streaming deltas; return (deltas, stop)."""
    deltas = []
    for i in ids:
        stop = d.update([i])
        deltas.append(d.get_delta())
        if stop is not None:
            break
    deltas.append(d.get_delta(finished=True))
    return deltas, d.stop_str


# ----------------------------------------------------------------------------- loading


class TestLoadTokenizer:
    def test_sentencepiece_from_directory(self, sp_tokenizer):
        assert type(sp_tokenizer).__name__ == "LlamaTokenizer"
        assert len(sp_tokenizer) == 32000
        assert encode(sp_tokenizer, "Hello world") == [22557, 1526]
        assert (sp_tokenizer.bos_token_id, sp_tokenizer.eos_token_id) == (1, 2)

    def test_saved_bpe_roundtrip(self, tmp_path, bpe_tokenizer):
        bpe_tokenizer.save_pretrained(tmp_path)
        tok = load_tokenizer(str(tmp_path))
        text = TEXTS[2]
        assert encode(tok, text) == encode(bpe_tokenizer, text)
        assert tok.chat_template == CHAT_TEMPLATE
        assert tok.eos_token_id == 2

    def test_empty_directory_is_a_clear_error(self, tmp_path):
        with pytest.raises(ValueError, match="cannot load a tokenizer from .*" + tmp_path.name):
            load_tokenizer(str(tmp_path))

    def test_file_is_a_clear_error(self, tmp_path):
        f = tmp_path / "tokenizer.json"
        f.write_text("{}")
        with pytest.raises(ValueError, match="expected a model directory"):
            load_tokenizer(str(f))


# ---------------------------------------------------------------- incremental text


def check_progress(out, partial, final):
    """``out`` is the text after some tokens, ``partial`` their full decode, ``final`` the
    decode of all tokens. Bytes of an unfinished character show as U+FFFD in ``partial``
    (SentencePiece's byte fallback even turns a whole run of byte tokens into U+FFFD until it
    is valid UTF-8): ``out`` must hold back exactly those and nothing else."""
    assert final.startswith(out)
    assert out.startswith(partial.split("\ufffd")[0])
    if "\ufffd" not in partial:
        assert out == partial


@pytest.mark.parametrize("stream", [None, False], ids=["decodestream", "python"])
@pytest.mark.parametrize("skip", [True, False], ids=["skip", "keep"])
def test_text_equals_full_decode_after_every_token(fast_tokenizer, stream, skip):
    tok = fast_tokenizer
    for text in TEXTS:
        ids = encode(tok, text)
        # Special tokens inside the output too (between whole characters).
        at = next(k for k in range(3, len(ids)) if "\ufffd" not in tok.decode(ids[:k]))
        ids = ids[:at] + [tok.eos_token_id] + ids[at:] + [tok.bos_token_id]
        d = detok(tok, stream=stream, skip_special_tokens=skip)
        final = tok.decode(ids, skip_special_tokens=skip)
        assert "\ufffd" not in final
        for k, i in enumerate(ids, 1):
            assert d.update([i]) is None
            check_progress(d.output_text, tok.decode(ids[:k], skip_special_tokens=skip), final)
        assert d.output_text == final
        assert d.output_token_ids == ids


@pytest.mark.parametrize("stream", [None, False], ids=["decodestream", "python"])
def test_text_after_prompt_is_the_continuation(fast_tokenizer, stream):
    """With a prompt as context the first token keeps its leading space (SentencePiece
    decode of the output alone drops it), exactly what decode(prompt + output) adds."""
    tok = fast_tokenizer
    for prompt_text, out_text in [("The answer is", " forty two 😀"),
                                  ("日本語の", "テキスト 龘"),
                                  ("x龘 abc def ghi", " jkl 𝔘 mno"),
                                  ("A list:\n", "- one\n- two")]:
        prompt = [tok.bos_token_id] + encode(tok, prompt_text)
        out = encode(tok, prompt_text + out_text)[len(encode(tok, prompt_text)):]
        full = tok.decode(prompt + out, skip_special_tokens=True)
        head = tok.decode(prompt, skip_special_tokens=True)
        assert full.startswith(head)
        d = detok(tok, prompt, stream=stream)
        deltas, _ = feed(d, out)
        assert d.output_text == full[len(head):]
        assert "".join(deltas) == d.output_text


def test_sentencepiece_leading_space(sp_tokenizer):
    tok = sp_tokenizer
    ids = encode(tok, "Hello world")
    assert tok.convert_ids_to_tokens(ids) == ["▁Hello", "▁world"]
    d = detok(tok)
    d.update(ids[:1])
    assert d.output_text == "Hello"  # like decode(): the first '▁' of a sequence is dropped
    d.update(ids[1:])
    assert d.output_text == "Hello world"
    d = detok(tok, prompt=[1] + encode(tok, "Say"))
    d.update(ids)
    assert d.output_text == " Hello world"
    # Lone '▁' tokens and runs of them.
    ids = encode(tok, "a\nb  c    d")
    assert {"▁▁", "▁▁▁▁"} & set(tok.convert_ids_to_tokens(ids))
    d = detok(tok)
    feed(d, ids)
    assert d.output_text == "a\nb  c    d"


@pytest.mark.parametrize("stream", [None, False], ids=["decodestream", "python"])
def test_sentencepiece_byte_fallback(sp_tokenizer, stream):
    tok = sp_tokenizer
    for ch in RARE:
        ids = encode(tok, f"x {ch} y")
        pieces = tok.convert_ids_to_tokens(ids)
        nbytes = len(ch.encode())
        byte_pieces = [f"<0x{b:02X}>" for b in ch.encode()]
        start = pieces.index(byte_pieces[0])
        assert pieces[start:start + nbytes] == byte_pieces
        d = detok(tok, stream=stream)
        seen = []
        for i in ids:
            d.update([i])
            seen.append(d.output_text)
            assert "\ufffd" not in d.get_delta()
        # Held back while the character is incomplete, then emitted whole.
        for k in range(start, start + nbytes - 1):
            assert seen[k] == "x "
        assert seen[start + nbytes - 1] == f"x {ch}"
        d.get_delta(finished=True)
        assert d.output_text == f"x {ch} y"


@pytest.mark.parametrize("stream", [None, False], ids=["decodestream", "python"])
def test_bytelevel_multibyte_split_across_tokens(bpe_tokenizer, stream):
    tok = bpe_tokenizer
    text = "ok 😀 日本 ok"
    ids = encode(tok, text)
    lone = [decode_token(tok, i) for i in ids]
    assert lone.count("\ufffd") >= 6  # emoji and CJK bytes are separate tokens here
    d = detok(tok, stream=stream)
    for k, i in enumerate(ids, 1):
        d.update([i])
        check_progress(d.output_text, tok.decode(ids[:k]), text)
    assert d.output_text == text


def test_python_tokenizer_bytes(byt5_tokenizer):
    """ByT5 (no Rust backend, one token per byte) goes through the Python prefix/read loop."""
    tok = byt5_tokenizer
    for text in TEXTS:
        ids = encode(tok, text)
        d = detok(tok)
        deltas, _ = feed(d, ids)
        assert d.output_text == text
        assert "".join(deltas) == text
        assert all("\ufffd" not in c for c in deltas)
    with pytest.raises(ValueError, match="no Rust backend"):
        detok(tok, stream=True)


@pytest.mark.parametrize("stream", [None, False], ids=["decodestream", "python"])
def test_prompt_ending_inside_a_character(bpe_tokenizer, stream):
    tok = bpe_tokenizer
    ids = encode(tok, "abc 😀 tail")
    cut = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))
    d = detok(tok, ids[:cut], stream=stream)
    d.update([i for i in encode(tok, " next words")])
    # The prompt's unfinished bytes are never emitted as output text.
    assert d.output_text == " next words"


@pytest.mark.parametrize("stream", [None, False], ids=["decodestream", "python"])
def test_random_ids_final_text_equals_decode(fast_tokenizer, stream):
    """Arbitrary id sequences (invalid UTF-8 included): the flushed text is decode(ids)."""
    tok = fast_tokenizer
    rng = random.Random(1234)
    for _ in range(200):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 12))]
        skip = rng.random() < 0.5
        d = detok(tok, stream=stream, skip_special_tokens=skip)
        deltas, _ = feed(d, ids)
        assert d.output_text == tok.decode(ids, skip_special_tokens=skip)
        assert "".join(deltas) == d.output_text


class TestSpecialTokens:
    def test_skip_both_ways(self, sp_tokenizer):
        tok = sp_tokenizer
        ids = [1] + encode(tok, "Hello") + [2] + encode(tok, " world") + [2]
        d = detok(tok, skip_special_tokens=True)
        feed(d, ids)
        assert d.output_text == "Hello world"
        d = detok(tok, skip_special_tokens=False)
        feed(d, ids)
        assert d.output_text == tok.decode(ids) == "<s> Hello</s> world</s>"

    def test_stop_terminated_token_is_not_decoded(self, bpe_tokenizer):
        tok = bpe_tokenizer
        ids = encode(tok, "the end") + [tok.eos_token_id]
        d = detok(tok, skip_special_tokens=False)
        assert d.update(ids, stop_terminated=True) is None
        assert d.output_text == "the end"
        assert d.output_token_ids == ids

    def test_spaces_between_special_tokens(self):
        """A WordPiece decoder joins tokens with spaces; spaces_between_special_tokens=False
        removes the ones between two special tokens (vLLM's meaning)."""
        from tokenizers import Tokenizer, decoders, models
        from transformers import PreTrainedTokenizerFast

        vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "world": 4, "##s": 5}
        backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        backend.decoder = decoders.WordPiece()
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]")
        ids = [1, 2, 3, 4, 5, 2, 1]
        d = detok(tok, skip_special_tokens=False, spaces_between_special_tokens=True)
        feed(d, ids)
        assert d.output_text == tok.decode(ids) == "[CLS] [SEP] hello worlds [SEP] [CLS]"
        d = detok(tok, skip_special_tokens=False, spaces_between_special_tokens=False)
        feed(d, ids)
        assert d.output_text == "[CLS][SEP] hello worlds [SEP][CLS]"
        d = detok(tok, skip_special_tokens=True, spaces_between_special_tokens=False)
        feed(d, ids)
        assert d.output_text == "hello worlds"


# ------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("stream", [None, False], ids=["decodestream", "python"])
def test_streaming_deltas(fast_tokenizer, stream):
    tok = fast_tokenizer
    for text in TEXTS:
        d = detok(tok, stream=stream)
        deltas, _ = feed(d, encode(tok, text))
        assert "".join(deltas) == d.output_text == tok.decode(encode(tok, text))
        assert all("\ufffd" not in c for c in deltas)
        assert sum(1 for c in deltas if c) > 3  # really streamed, not one final chunk


def test_streaming_holds_back_possible_stop_start(sp_tokenizer):
    tok = sp_tokenizer
    d = detok(tok, stop=["XYZ!"])  # 4 chars: 3 held back
    d.update(encode(tok, "Hello world"))
    assert d.get_delta() == "Hello wo"
    assert d.get_delta() == ""
    assert d.get_delta(finished=True) == "rld"
    assert d.is_finished and d.stop_str is None
    d = detok(tok, stop=["XYZ!"], include_stop_str_in_output=True)  # nothing to retract
    d.update(encode(tok, "Hello world"))
    assert d.get_delta() == "Hello world"


# ---------------------------------------------------------------------- stop strings


class TestStopStrings:
    TEXT = "Hello world, how are you? I am fine."

    def ids(self, tok):
        return encode(tok, self.TEXT)

    def run(self, tok, **params):
        d = detok(tok, **params)
        deltas, stop = feed(d, self.ids(tok))
        # No chunk ever retracted: the deltas add up to the final text.
        assert "".join(deltas) == d.output_text
        return d, stop

    @pytest.mark.parametrize("include", [False, True])
    def test_spanning_several_tokens(self, sp_tokenizer, include):
        tok = sp_tokenizer
        pieces = tok.convert_ids_to_tokens(self.ids(tok))
        assert pieces[1:4] == ["▁world", ",", "▁how"]  # "world, how" spans 3 tokens
        d, stop = self.run(tok, stop=["world, how"], include_stop_str_in_output=include)
        assert stop == "world, how"
        assert d.output_text == ("Hello world, how" if include else "Hello ")
        assert d.output_token_ids == self.ids(tok)[:4]  # tokens after the match unconsumed
        d, stop = self.run(tok, stop=["lo wor"], include_stop_str_in_output=include)  # 2 tokens
        assert stop == "lo wor"
        assert d.output_text == ("Hello wor" if include else "Hel")

    def test_tail_of_matching_token_is_dropped(self, sp_tokenizer):
        # The stop "ell" lies inside the first token "▁Hello": "o" after it is cut too.
        d, stop = self.run(sp_tokenizer, stop=["ell"], include_stop_str_in_output=True)
        assert (stop, d.output_text) == ("ell", "Hell")
        assert d.output_token_ids == self.ids(sp_tokenizer)[:1]

    def test_stop_in_first_token(self, sp_tokenizer):
        d, stop = self.run(sp_tokenizer, stop=["Hel"])
        assert (stop, d.output_text) == ("Hel", "")
        assert d.output_token_ids == self.ids(sp_tokenizer)[:1]

    def test_stop_at_start_bytelevel(self, bpe_tokenizer):
        tok = bpe_tokenizer
        ids = self.ids(tok)
        first = next(k for k in range(1, len(ids) + 1) if "Hel" in tok.decode(ids[:k]))
        assert first > 1  # "Hel" spans several tokens of this small vocabulary
        d, stop = self.run(tok, stop=["Hel"])
        assert (stop, d.output_text) == ("Hel", "")
        assert d.output_token_ids == ids[:first]

    def test_first_to_complete_wins(self, sp_tokenizer):
        tok = sp_tokenizer
        # "you" completes before "how are you?" does, though the latter starts earlier.
        d, stop = self.run(tok, stop=["how are you?", "you", "fine"])
        assert (stop, d.output_text) == ("you", "Hello world, how are ")
        d, stop = self.run(tok, stop=["fine", "are"])  # order in the list does not matter
        assert (stop, d.output_text) == ("are", "Hello world, how ")
        # Two stops completing in the same token: the one ending first in the text.
        d, stop = self.run(tok, stop=["orld", "wo"])
        assert (stop, d.output_text) == ("wo", "Hello ")
        # Same end: the longer one (it starts earlier).
        d, stop = self.run(tok, stop=["ld", "world"])
        assert (stop, d.output_text) == ("world", "Hello ")

    def test_many_tokens_in_one_update(self, bpe_tokenizer):
        tok = bpe_tokenizer
        ids = self.ids(tok)
        d = detok(tok, stop=["are"])
        assert d.update(ids) == "are"
        assert d.output_text == "Hello world, how "
        consumed = len(d.output_token_ids)
        assert tok.decode(ids[:consumed]).endswith("are")
        assert "are" not in tok.decode(ids[:consumed - 1])
        assert d.update(ids) is None  # finished: later calls change nothing
        assert d.output_text == "Hello world, how "

    def test_stop_in_prompt_is_ignored(self, sp_tokenizer):
        tok = sp_tokenizer
        prompt = encode(tok, "Say hello world")
        d = detok(tok, prompt, stop=["world"])
        assert d.update(encode(tok, "Say hello world now")[len(prompt):]) is None
        assert d.output_text == " now"
        d = detok(tok, prompt, stop=["hello"])
        assert d.update(encode(tok, " hello there")) == "hello"
        assert d.output_text == " "

    def test_min_tokens_defers_stop(self, sp_tokenizer):
        tok = sp_tokenizer
        ids = encode(tok, "Hello you and you")
        d = detok(tok, stop=["you"], min_tokens=3)
        feed(d, ids)
        assert d.stop_str == "you"
        assert d.output_text == "Hello you and "

    def test_stream_never_leaks_part_of_a_stop(self, fast_tokenizer):
        tok = fast_tokenizer
        for stop in ["world, how", "are you?", "I am", "fine."]:
            d = detok(tok, stop=[stop, "zzzz-not-there"])
            sent = ""
            for i in self.ids(tok):
                hit = d.update([i])
                sent += d.get_delta()
                assert d.output_text.startswith(sent) or d.is_finished
                if hit:
                    break
            sent += d.get_delta(finished=True)
            assert d.stop_str == stop
            assert sent == d.output_text == self.TEXT[: self.TEXT.index(stop)]

    @pytest.mark.parametrize("include", [False, True])
    @pytest.mark.parametrize("delta_every", [1, 37, 0])
    @pytest.mark.parametrize("buf_chars", [None, 4])
    def test_long_output(self, fast_tokenizer, include, delta_every, buf_chars, monkeypatch):
        """Thousands of characters (past the internal buffer; a tiny one spills on nearly
        every token), a stop near the end, deltas every step, now and then, or never."""
        tok = fast_tokenizer
        if buf_chars is not None:
            monkeypatch.setattr(IncrementalDetokenizer, "_BUF_CHARS", buf_chars)
        text = local_text()[:6000]
        stop = text[5000:5012]
        assert text.index(stop) == 5000
        ids = encode(tok, text)
        d = detok(tok, stop=["\x00never", stop], include_stop_str_in_output=include)
        sent = ""
        for k, i in enumerate(ids, 1):
            hit = d.update([i])
            if delta_every and k % delta_every == 0:
                sent += d.get_delta()
                assert d.output_text.startswith(sent)
            if hit:
                break
        sent += d.get_delta(finished=True)
        expected = text[:5012] if include else text[:5000]
        assert d.stop_str == stop
        assert sent == d.output_text == expected

    @pytest.mark.parametrize("include", [False, True])
    def test_random_stops_match_a_char_level_reference(self, fast_tokenizer, include):
        """Result equals scanning the whole text at once: cut at the stop occurrence that
        ends first (ties: the longer one), whatever the token boundaries."""
        tok = fast_tokenizer
        rng = random.Random(99)
        for _ in range(150):
            ids = encode(tok, rng.choice(TEXTS))
            text = tok.decode(ids)
            stops = []
            for _ in range(rng.randint(1, 4)):
                a = rng.randrange(len(text))
                stops.append(text[a:a + rng.randint(1, 6)])
            stops.append("\x01absent")
            found = [(text.index(st) + len(st), text.index(st)) for st in stops if st in text]
            end, start = min(found)
            d = detok(tok, stop=stops, include_stop_str_in_output=include)
            deltas, stop = feed(d, ids)
            assert stop is not None and text[start:end] == stop
            assert "".join(deltas) == d.output_text == text[:end if include else start]

    def test_multibyte_stop_string(self, sp_tokenizer):
        tok = sp_tokenizer
        d = detok(tok, stop=["龘"])
        deltas, stop = feed(d, encode(tok, "abc 龘 def"))
        assert stop == "龘" and d.output_text == "abc "
        assert "".join(deltas) == "abc "

    def test_no_detokenize(self, bpe_tokenizer):
        d = detok(bpe_tokenizer, detokenize=False)
        ids = encode(bpe_tokenizer, "Hello")
        assert d.update(ids) is None
        assert d.output_token_ids == ids and d.output_text == "" and d.get_delta(True) == ""
        with pytest.raises(ValueError, match="detokenize"):
            detok(bpe_tokenizer, detokenize=False, stop=["x"])


# ------------------------------------------------------------------- single tokens


class TestDecodeToken:
    def test_bytelevel(self, bpe_tokenizer):
        tok = bpe_tokenizer
        the = tok.convert_tokens_to_ids("Ġthe")
        assert decode_token(tok, the) == " the"
        assert decode_token(tok, tok.eos_token_id) == "</s>"
        emoji_ids = encode(tok, "😀")
        assert [decode_token(tok, i) for i in emoji_ids] == ["\ufffd"] * len(emoji_ids)
        ids = encode(tok, TEXTS[1] + " " + TEXTS[2])
        assert "".join(decode_token(tok, i) for i in ids) == tok.decode(ids)

    def test_sentencepiece(self, sp_tokenizer):
        tok = sp_tokenizer
        ids = tok.convert_tokens_to_ids(["▁the", "<0x0A>", "<0xF0>", "ox", "▁▁"])
        assert [decode_token(tok, i) for i in ids] == [" the", "\n", "\ufffd", "ox", "  "]
        assert decode_token(tok, 2) == "</s>"
        ids = encode(tok, TEXTS[1])
        assert "".join(decode_token(tok, i) for i in ids) == " " + tok.decode(ids)

    def test_cached(self, bpe_tokenizer):
        a = decode_token(bpe_tokenizer, 300)
        assert decode_token(bpe_tokenizer, 300) is a


# ------------------------------------------------------------ eos and chat template


def test_eos_token_ids(bpe_tokenizer):
    assert eos_token_ids(bpe_tokenizer, None) == frozenset({2})
    assert eos_token_ids(bpe_tokenizer, 2) == frozenset({2})
    assert eos_token_ids(bpe_tokenizer, 7) == frozenset({2, 7})
    assert eos_token_ids(bpe_tokenizer, [7, 9]) == frozenset({2, 7, 9})
    assert eos_token_ids(None, [7, 9]) == frozenset({7, 9})


class TestChatTemplate:
    MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]

    def test_with_tokenizer_template(self, bpe_tokenizer):
        tok = bpe_tokenizer
        ids = apply_chat_template(tok, self.MESSAGES)
        text = "<s>system\nBe brief.</s>\n<s>user\nhi</s>\n<s>assistant\n"
        assert ids == encode(tok, text)
        assert ids.count(tok.bos_token_id) == 3 and ids[0] == tok.bos_token_id
        assert tok.decode(ids) == text
        ids = apply_chat_template(tok, self.MESSAGES, add_generation_prompt=False)
        assert tok.decode(ids) == "<s>system\nBe brief.</s>\n<s>user\nhi</s>\n"

    def test_explicit_template_and_missing_template(self, sp_tokenizer):
        tok = sp_tokenizer
        assert not tok.chat_template
        with pytest.raises(ValueError, match="no chat template"):
            apply_chat_template(tok, self.MESSAGES)
        ids = apply_chat_template(tok, self.MESSAGES, chat_template=CHAT_TEMPLATE)
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids) == "<s>system\nBe brief.</s>\n<s>user\nhi</s>\n<s>assistant\n"
