"""A byte-level BPE tokenizer of a given vocabulary size, trained here, for benchmarks on
random-weight shapes whose real tokenizer cannot be downloaded (no network).

Structured outputs cost in proportion to the vocabulary the grammar filters, so the mask
benchmark of the 8B shape needs a 128,256-token vocabulary of realistic token strings. This
trains one, deterministically, on the Python standard library's sources of the machine it runs
on; the result's sha256 is printed so that a result can name the tokenizer it used.

    python benchmarks/make_bench_tokenizer.py --vocab-size 128256 --out .bench_tok/llama-8b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sysconfig
from pathlib import Path


def corpus(limit_bytes: int):
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text)
        yield text
        if total >= limit_bytes:
            return


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=128256)
    ap.add_argument("--corpus-mb", type=int, default=40)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(args.corpus_mb << 20), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0],
                                   eos_token=specials[1])
    out = Path(args.out)
    fast.save_pretrained(out)
    digest = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    print(json.dumps({"vocab": tok.get_vocab_size(), "sha256": digest, "out": str(out)}))


if __name__ == "__main__":
    main()
