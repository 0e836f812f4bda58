"""Tokenizer loading, chat templates and incremental detokenization."""

from llmserve.tokenizer.detokenizer import IncrementalDetokenizer
from llmserve.tokenizer.tokenizer import (
    apply_chat_template,
    decode_token,
    eos_token_ids,
    load_tokenizer,
)

__all__ = [
    "IncrementalDetokenizer",
    "apply_chat_template",
    "decode_token",
    "eos_token_ids",
    "load_tokenizer",
]
