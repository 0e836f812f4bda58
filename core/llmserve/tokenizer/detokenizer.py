"""Incremental detokenization of one request's output, with stop strings and streaming deltas.

Decoding uses the prefix/read-offset method: keep the tokens of the last emitted chunk as
context, decode context + new tokens, and emit the part past the context's own text unless it
ends in U+FFFD (an incomplete UTF-8 character: a byte-level or ``<0xNN>`` byte-fallback token
that needs its continuation bytes). Decoding with context is what keeps SentencePiece's
leading space ('▁the' -> ' the') and merges bytes split across tokens.

For fast tokenizers the same method runs inside ``tokenizers.decoders.DecodeStream`` (Rust),
the faster of the two (us/token, 20k tokens of English, tokenizers 0.23, one CPU core):

    ===============================  ==============  =============
    path                             byte-level BPE  Mistral SP
    ===============================  ==============  =============
    DecodeStream.step alone          0.62            1.24
    Python loop over Rust decode     1.11            1.72
    update(), DecodeStream           1.09            1.77
    update(), Python loop            1.60            2.32
    + get_delta + 3 stop strings     +0.7            +0.8
    ===============================  ==============  =============

Tokenizers without a Rust backend use the Python loop over their own ``decode``. Both paths
give ``tokenizer.decode(output_ids)`` for valid text.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from llmserve.sampling_params import SamplingParams

_REPLACEMENT = "\ufffd"
#: Prompt tokens decoded as context for the first output token (vLLM uses the same 5).
_NUM_CONTEXT_TOKENS = 5
#: How far back the context may reach to start on a whole character.
_MAX_CONTEXT_TOKENS = 24


class _WindowDecoder:
    """Prefix/read-offset decoding over a growing id list with a ``decode(ids) -> str``.

    ``_ids[_prefix:_read]`` are the tokens of the last emitted chunk (or the prompt context);
    ``_ids[_read:]`` are tokens not yet turned into text.
    """

    def __init__(self, decode: Callable[[list[int]], str], context_ids: list[int],
                 context_text: Optional[str] = None) -> None:
        self._decode = decode
        self._ids = list(context_ids)
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text = context_text  # decode(_ids[_prefix:_read]); None: not yet known

    def step(self, token_id: int) -> Optional[str]:
        self._ids.append(token_id)
        return self._window_step()

    def _window_step(self) -> Optional[str]:
        ids = self._ids
        if self._prefix_text is None:
            self._prefix_text = self._decode(ids[self._prefix:self._read])
        prefix_len = len(self._prefix_text)
        text = self._decode(ids[self._prefix:])
        if len(text) <= prefix_len or text.endswith(_REPLACEMENT):
            return None
        # The context's text is assumed stable (true of byte-level BPE and SentencePiece):
        # emitted text is never revised.
        self._advance()
        return text[prefix_len:]

    def _advance(self) -> None:
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = None

    def flush(self) -> str:
        """Text of the tokens still held back, U+FFFD included (the request is over)."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._advance()
        return text[len(prefix_text):]


class _StreamDecoder(_WindowDecoder):
    """The same method run by ``tokenizers.decoders.DecodeStream``; the Python bookkeeping is
    kept only for ``flush`` and to fall back to the Python loop if the stream errs (it raises
    "Invalid prefix encountered" when a decode is not an extension of the previous one)."""

    def __init__(self, backend: Any, context_ids: list[int], skip_special_tokens: bool) -> None:
        from tokenizers.decoders import DecodeStream

        def decode(ids: list[int]) -> str:
            return backend.decode(ids, skip_special_tokens=skip_special_tokens)

        super().__init__(decode, context_ids)
        self._backend = backend
        self._stream: Any = DecodeStream(
            ids=list(context_ids) or None, skip_special_tokens=skip_special_tokens
        )

    def step(self, token_id: int) -> Optional[str]:
        self._ids.append(token_id)
        if self._stream is None:
            return self._window_step()
        try:
            chunk = self._stream.step(self._backend, token_id)
        except Exception:  # noqa: BLE001 - the Rust side raises a bare Exception
            self._stream = None
            return self._window_step()
        if chunk is not None:
            self._advance()
        return chunk


def _context(decode: Callable[[list[int]], str],
             prompt_token_ids: Sequence[int]) -> tuple[list[int], str]:
    """The last few prompt tokens, starting on a whole character, and their text."""
    n = len(prompt_token_ids)
    if n > _NUM_CONTEXT_TOKENS:
        for i in range(_NUM_CONTEXT_TOKENS, min(n, _MAX_CONTEXT_TOKENS) + 1):
            ids = list(prompt_token_ids[-i:])
            text = decode(ids)
            if _REPLACEMENT not in text:
                return ids, text
        ids = list(prompt_token_ids[-_NUM_CONTEXT_TOKENS:])
    else:
        ids = list(prompt_token_ids)
    return ids, decode(ids)


def _make_decoder(
    tokenizer: Any, prompt_token_ids: Sequence[int], skip_special_tokens: bool,
    use_decode_stream: Optional[bool],
) -> _WindowDecoder:
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    is_fast = isinstance(backend, Tokenizer)
    if use_decode_stream and not is_fast:
        raise ValueError(f"{type(tokenizer).__name__} has no Rust backend for DecodeStream")
    if is_fast:
        def decode(ids: list[int]) -> str:
            return backend.decode(ids, skip_special_tokens=skip_special_tokens)
    else:
        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    context, context_text = _context(decode, prompt_token_ids)
    # DecodeStream treats a context that ends inside a character as not yet emitted and
    # would emit it with the first output token; such prompts (rare) take the Python loop.
    if is_fast and use_decode_stream is not False and not context_text.endswith(_REPLACEMENT):
        return _StreamDecoder(backend, context, skip_special_tokens)
    return _WindowDecoder(decode, context, context_text)


class IncrementalDetokenizer:
    """Turns one sequence's output tokens into text as they arrive, and finds stop strings.

    The text is stored as ``_done`` (older chunks, joined only when ``output_text`` is read)
    plus ``_buf`` (the last few hundred characters), so that appending, the stop check (a
    ``find`` over the new chunk plus ``max_stop_len - 1`` characters before it) and
    ``get_delta`` (a slice of ``_buf``) cost the same at token 10 and at token 10,000; one
    growing ``str`` would be copied on every append.

    ``output_text`` is the text so far, cut at a matched stop string (before it, or after it
    with ``include_stop_str_in_output``), and without a trailing incomplete character while
    the request runs; ``get_delta(finished=True)`` adds that character's bytes as U+FFFD, so
    the final text equals ``tokenizer.decode(output_token_ids)``.
    """

    #: ``_buf`` spills into ``_done`` past this many characters.
    _BUF_CHARS = 512

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        use_decode_stream: Optional[bool] = None,
    ) -> None:
        """``use_decode_stream``: None picks DecodeStream for fast tokenizers; False forces
        the Python prefix/read loop (for comparison); True requires a fast tokenizer (a
        prompt that ends inside a character still takes the Python loop)."""
        stops = tuple(params.stop_strings)
        if stops and not params.detokenize:
            raise ValueError("stop strings need detokenize=True")
        #: Output ids consumed so far; a stop-string match drops the rest of that update.
        self.output_token_ids: list[int] = []
        #: The stop string that ended the sequence, if one did.
        self.stop_str: Optional[str] = None
        #: True after a stop-string match or ``get_delta(finished=True)``.
        self.is_finished = False

        self._decoder = (
            _make_decoder(tokenizer, prompt_token_ids, params.skip_special_tokens,
                          use_decode_stream)
            if params.detokenize else None
        )
        self._stops = stops
        self._stop_lens = tuple((stop, len(stop)) for stop in stops)
        self._include_stop = params.include_stop_str_in_output
        self._min_tokens = params.min_tokens
        self._tail_len = max(max(map(len, stops), default=0) - 1, 0)
        # An excluded stop string may already have begun in the last max_stop_len-1
        # characters, so get_delta holds those back; an included one never retracts text.
        self._holdback = 0 if self._include_stop else self._tail_len
        self._done: list[str] = []
        self._buf = ""
        self._num_chars = 0  # len("".join(_done) + _buf)
        self._num_sent = 0
        # spaces_between_special_tokens=False: a decoder that joins tokens with spaces
        # (WordPiece) must not put one between two added tokens, as in vLLM.
        self._added: Optional[dict[int, str]] = None
        if not params.skip_special_tokens and not params.spaces_between_special_tokens:
            self._added = {i: t.content for i, t in
                           (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
        self._last_added = False

    @property
    def output_text(self) -> str:
        if len(self._done) > 1:
            self._done[:] = ["".join(self._done)]
        return self._done[0] + self._buf if self._done else self._buf

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> Optional[str]:
        """Append ``new_token_ids`` one at a time; return the stop string if one matched.

        On a match the text is cut and the remaining ids of this call are not consumed.
        ``stop_terminated``: the last id is an EOS or stop token; it is recorded in
        ``output_token_ids`` but not decoded (vLLM does the same).
        """
        if self.is_finished:
            return None
        ids = new_token_ids[:-1] if stop_terminated else new_token_ids
        decoder = self._decoder
        for token_id in ids:
            self.output_token_ids.append(token_id)
            if decoder is None:
                continue
            chunk = decoder.step(token_id)
            if self._added is not None:
                chunk = self._without_special_spaces(token_id, chunk)
            if chunk:
                self._append(chunk)
                if self._stops and len(self.output_token_ids) > self._min_tokens:
                    stop = self._check_stop(len(chunk))
                    if stop is not None:
                        return stop
        if stop_terminated and new_token_ids:
            self.output_token_ids.append(new_token_ids[-1])
        return None

    def get_delta(self, finished: bool = False) -> str:
        """Text added since the previous call, for streaming.

        While running, the last ``max_stop_len - 1`` characters are held back (they may be
        the start of a stop string) and so is an incomplete UTF-8 character. ``finished=True``
        ends the sequence and returns everything left.
        """
        if finished and not self.is_finished:
            self.is_finished = True
            if self._decoder is not None and self.stop_str is None:
                self._append(self._decoder.flush())
        end = self._num_chars if self.is_finished else self._num_chars - self._holdback
        start = self._num_sent
        if end <= start:
            return ""
        self._num_sent = end
        buf_start = self._num_chars - len(self._buf)
        if start >= buf_start:
            return self._buf[start - buf_start:end - buf_start]
        return self.output_text[start:end]

    def _append(self, chunk: str) -> None:
        buf = self._buf + chunk
        if len(buf) > self._BUF_CHARS:
            # Keep what the stop check needs, and the unsent text unless get_delta is not
            # being called (no streaming): then it reads from output_text once at the end.
            unsent = self._num_chars + len(chunk) - self._num_sent
            keep = max(self._tail_len + len(chunk), min(unsent, self._BUF_CHARS // 2))
            if keep < len(buf):
                self._done.append(buf[:len(buf) - keep])
                buf = buf[len(buf) - keep:]
        self._buf = buf
        self._num_chars += len(chunk)

    def _without_special_spaces(self, token_id: int, chunk: Optional[str]) -> Optional[str]:
        content = self._added.get(token_id)  # type: ignore[union-attr]
        if content is not None and self._last_added and chunk is not None:
            chunk = content
        self._last_added = content is not None
        return chunk

    def _check_stop(self, num_new: int) -> Optional[str]:
        """Find a stop string that ends in the last ``num_new`` characters; the one that
        completes first in the text wins (on a tie, the longer one), which does not depend on
        how the text was cut into tokens."""
        buf = self._buf
        new_start = len(buf) - num_new
        best: Optional[tuple[int, int, str]] = None
        for stop, n in self._stop_lens:
            first = new_start - n + 1  # earliest start of a match that ends in the new text
            i = buf.find(stop, first if first > 0 else 0)
            if i >= 0 and (best is None or (i + n, i) < best[:2]):
                best = (i + n, i, stop)
        if best is None:
            return None
        end, start, stop = best
        cut = end if self._include_stop else start
        self._num_chars -= len(buf) - cut
        self._buf = buf[:cut]
        self.stop_str = stop
        self.is_finished = True
        return stop
