"""Loading a Hugging Face tokenizer and the few things the engine asks of it.

Everything here works on the ``transformers`` tokenizer object itself (``AutoTokenizer``'s
result); no wrapper class, so plugins and tests can hand in any HF tokenizer.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Any, Callable, Iterable, Optional, Union

#: Piece put before a token when decoding it alone, so that decoders which strip the first
#: character of a sequence (SentencePiece's leading "▁") keep the token's own leading space.
_ANCHOR = "a"
#: Bound on cached single-token strings per tokenizer; larger than any real vocabulary.
_TOKEN_CACHE_SIZE = 1 << 19

_token_decoders: "weakref.WeakKeyDictionary[Any, Callable[[int], str]]" = (
    weakref.WeakKeyDictionary()
)


def load_tokenizer(path_or_name: str, trust_remote_code: bool = False, **kwargs: Any):
    """Load the HF tokenizer of a model directory (or a hub name already in the local cache).

    A directory is read with ``local_files_only=True`` so a missing file fails at once instead
    of reaching for the network. Any failure is re-raised as ``ValueError`` naming the path.
    """
    from transformers import AutoTokenizer

    path_or_name = os.fspath(path_or_name)
    if os.path.isdir(path_or_name):
        kwargs.setdefault("local_files_only", True)
    elif os.path.exists(path_or_name):
        raise ValueError(
            f"cannot load a tokenizer from {path_or_name!r}: expected a model directory "
            "(with tokenizer.json, tokenizer.model or tokenizer_config.json), got a file"
        )
    try:
        return AutoTokenizer.from_pretrained(
            path_or_name, trust_remote_code=trust_remote_code, **kwargs
        )
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ...
        raise ValueError(
            f"cannot load a tokenizer from {path_or_name!r} "
            f"(trust_remote_code={trust_remote_code}): {type(e).__name__}: {e}"
        ) from e


def eos_token_ids(
    tokenizer: Any, generation_config_eos: Union[int, Iterable[int], None] = None
) -> frozenset[int]:
    """Token ids that end generation: generation_config.json's ``eos_token_id`` (an int or a
    list, as chat models such as Llama 3 list several) together with the tokenizer's EOS."""
    ids: set[int] = set()
    if generation_config_eos is not None:
        if isinstance(generation_config_eos, int):
            ids.add(generation_config_eos)
        else:
            ids.update(int(i) for i in generation_config_eos)
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if tok_eos is not None:
        ids.add(int(tok_eos))
    return frozenset(ids)


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    chat_template: Optional[str] = None,
    tools: Optional[list[dict[str, Any]]] = None,
    **kwargs: Any,
) -> list[int]:
    """Render ``messages`` with the chat template and tokenize the result.

    The rendered text is encoded without adding special tokens: templates write their own BOS,
    and adding another would change what the model sees. ``tools`` are OpenAI-style tool
    definitions (``{"type": "function", "function": {"name", "description", "parameters"}}``),
    which templates of tool-calling models render into the prompt; None renders none. Other
    ``kwargs`` reach the template too (``documents``, model-specific switches).
    """
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "")
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}, {name!r}) has no chat template; "
            "pass chat_template=... (a Jinja template string)"
        )
    text = tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        tokenize=False,
        **kwargs,
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def decode_token(tokenizer: Any, token_id: int) -> str:
    """Text of one token as it reads inside a sequence, for ``Logprob.decoded_token``.

    convert_ids_to_tokens then convert_tokens_to_string semantics: byte-level ``'Ġthe'`` and
    SentencePiece ``'▁the'`` both give ``' the'``; a lone byte of a multibyte character gives
    ``'\\ufffd'``; added/special tokens give their content. Cached per tokenizer, since the
    same few thousand ids recur in every top-k list.
    """
    try:
        fn = _token_decoders[tokenizer]
    except KeyError:
        fn = _token_decoders[tokenizer] = _make_token_decoder(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        fn = _make_token_decoder(tokenizer)
    return fn(token_id)


def _make_token_decoder(tokenizer: Any) -> Callable[[int], str]:
    added_tokens = getattr(tokenizer, "added_tokens_decoder", None) or {}
    added = {i: t.content for i, t in added_tokens.items()}
    anchor_text = tokenizer.convert_tokens_to_string([_ANCHOR])

    @functools.lru_cache(maxsize=_TOKEN_CACHE_SIZE)
    def decode(token_id: int) -> str:
        if token_id in added:
            return added[token_id]
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:  # out of the vocabulary
            return ""
        text = tokenizer.convert_tokens_to_string([_ANCHOR, piece])
        if text.startswith(anchor_text):
            return text[len(anchor_text):]
        return tokenizer.convert_tokens_to_string([piece])

    return decode
