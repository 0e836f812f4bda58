"""``SamplingMetadata``: one step's sampling settings as batched tensors, one row per request.

Built fresh each step from the requests that sample. Every optional feature is ``None`` unless
some request of the batch uses it, so the common batch (all greedy, nothing else) builds no
tensor at all and the sampler reduces to an argmax. Sparse features (logit bias, min_tokens,
allowed ids, penalties) keep only the rows that use them: one request with a penalty must not
cost a ``[num_reqs, vocab]`` count tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from llmserve.sampling_params import (  # noqa: F401  (the feature bits live with the params)
    FEATURE_ALLOWED_IDS,
    FEATURE_LOGIT_BIAS,
    FEATURE_LOGPROBS,
    FEATURE_MIN_TOKENS,
    FEATURE_PENALTIES,
    FEATURE_PROCESSORS,
    OUTPUT_READING_FEATURES,
    SAMPLING_EPS,
    SamplingParams,
    check_token_ids,
    features_of,
)


@dataclass
class SamplingArrays:
    """The numeric sampling settings of a batch's rows as numpy arrays.

    A runner that keeps these per row (written once when a request arrives) gathers them with
    one fancy-index per field instead of reading every ``SamplingParams`` every step.
    """

    temperature: np.ndarray  # float64
    top_p: np.ndarray  # float64
    top_k: np.ndarray  # int64; 0 or -1 means off
    min_p: np.ndarray  # float64
    #: Bit set of the optional features (``FEATURE_*``) each row uses.
    features: np.ndarray  # int64

    FIELDS = ("temperature", "top_p", "top_k", "min_p", "features")

    @classmethod
    def from_params(cls, params: Sequence[SamplingParams]) -> SamplingArrays:
        n = len(params)
        return cls(
            temperature=np.fromiter((p.temperature for p in params), np.float64, n),
            top_p=np.fromiter((p.top_p for p in params), np.float64, n),
            top_k=np.fromiter((p.top_k for p in params), np.int64, n),
            min_p=np.fromiter((p.min_p for p in params), np.float64, n),
            features=np.fromiter((features_of(p) for p in params), np.int64, n),
        )


@dataclass(eq=False)
class SamplingMetadata:
    num_reqs: int
    vocab_size: int
    device: torch.device
    all_greedy: bool
    all_random: bool
    #: [num_reqs] float32; 1.0 on greedy rows. None when all greedy.
    temperature: torch.Tensor | None = None
    #: [num_reqs] bool; only for batches mixing greedy and random rows.
    is_greedy: torch.Tensor | None = None
    #: [num_reqs] long in [1, vocab]; vocab means off. None when no random row uses top-k.
    top_k: torch.Tensor | None = None
    #: Largest top-k in use (< vocab); 0 when none.
    max_top_k: int = 0
    #: [num_reqs] float32; None when no random row uses top-p (< 1).
    top_p: torch.Tensor | None = None
    #: Some row has top-p without top-k, so the sampler must sort the whole vocab.
    top_p_needs_sort: bool = False
    #: [num_reqs] float32; None when no random row uses min-p (> 0).
    min_p: torch.Tensor | None = None
    #: Row -> the request's own generator, for seeded random rows only.
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    #: Top-k logprobs to gather for the batch (the caller trims per request); None: none asked.
    max_num_logprobs: int | None = None

    # Penalties, only for rows that use one (None when none does).
    penalty_rows: torch.Tensor | None = None
    presence_penalties: torch.Tensor | None = None  # [R] or None when all 0
    frequency_penalties: torch.Tensor | None = None  # [R] or None when all 0
    repetition_penalties: torch.Tensor | None = None  # [R] or None when all 1
    #: [R, vocab] float32: how often each token occurs in the request's output.
    output_token_counts: torch.Tensor | None = None
    #: [R, vocab] bool: token occurs in the prompt (repetition penalty only).
    prompt_token_mask: torch.Tensor | None = None

    # allowed_token_ids: rows that have it and [rows, vocab] True where NOT allowed.
    allowed_rows: torch.Tensor | None = None
    disallowed_mask: torch.Tensor | None = None
    # logit_bias as flat (row, token, bias) triples.
    logit_bias_rows: torch.Tensor | None = None
    logit_bias_token_ids: torch.Tensor | None = None
    logit_bias_values: torch.Tensor | None = None
    # (row, token) pairs masked this step because the row is below its min_tokens.
    min_tokens_rows: torch.Tensor | None = None
    min_tokens_token_ids: torch.Tensor | None = None

    #: (row, callables) for requests with ``SamplingParams.logits_processors``.
    request_logits_processors: list[tuple[int, list[Callable]]] = field(default_factory=list)

    # The inputs, for processors that need per-request data.
    params: Sequence[SamplingParams] = ()
    output_token_ids: Sequence[list[int]] = ()
    prompt_token_ids: Sequence[list[int]] = ()

    @property
    def no_penalties(self) -> bool:
        return self.penalty_rows is None

    @property
    def no_top_k(self) -> bool:
        return self.top_k is None

    @property
    def no_top_p(self) -> bool:
        return self.top_p is None

    @property
    def no_min_p(self) -> bool:
        return self.min_p is None

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        output_token_ids: Sequence[list[int]],
        prompt_token_ids: Sequence[list[int]],
        stop_token_ids: Sequence[frozenset[int]],
        generators: Sequence[torch.Generator | None],
        vocab_size: int,
        device: torch.device,
        arrays: SamplingArrays | None = None,
    ) -> SamplingMetadata:
        """Gather the batch's settings; row i is ``params[i]``.

        ``stop_token_ids[i]`` are the ids ``min_tokens`` masks (EOS unless ignored, plus the
        request's stop ids). ``generators[i]`` is the request's own generator when it has a
        seed (a generator on ``device``): the runner creates it once from the seed and keeps
        it, so a request's draws depend on its own history only. ``arrays``, when the caller
        keeps them, are the same settings as per-row numpy arrays, which saves reading every
        ``SamplingParams`` each step.
        Raises ``ValueError`` for token ids outside the vocab.
        """
        n = len(params)
        if arrays is None:
            arrays = SamplingArrays.from_params(params)
        temps = arrays.temperature
        is_greedy = temps < SAMPLING_EPS
        num_greedy = int(is_greedy.sum())
        md = cls(
            num_reqs=n,
            vocab_size=vocab_size,
            device=device,
            all_greedy=num_greedy == n,
            all_random=num_greedy == 0,
            params=params,
            output_token_ids=output_token_ids,
            prompt_token_ids=prompt_token_ids,
        )
        if not md.all_greedy:
            _build_random(md, arrays, is_greedy, generators)

        used = int(np.bitwise_or.reduce(arrays.features)) if n else 0
        if used & FEATURE_LOGPROBS:
            md.max_num_logprobs = max(p.logprobs for p in params if p.logprobs is not None)
        if used & FEATURE_PENALTIES:
            pres = [p.presence_penalty for p in params]
            freq = [p.frequency_penalty for p in params]
            rep = [p.repetition_penalty for p in params]
            _build_penalties(md, pres, freq, rep, output_token_ids, prompt_token_ids)
        if used & FEATURE_LOGIT_BIAS:
            _build_logit_bias(md, params, [i for i, p in enumerate(params) if p.logit_bias])
        if used & FEATURE_ALLOWED_IDS:
            _build_allowed(md, params, [i for i, p in enumerate(params)
                                        if p.allowed_token_ids is not None])
        if used & FEATURE_MIN_TOKENS:
            min_rows = [
                i for i, p in enumerate(params)
                if p.min_tokens and len(output_token_ids[i]) < p.min_tokens and stop_token_ids[i]
            ]
            if min_rows:
                _build_min_tokens(md, min_rows, stop_token_ids)
        if used & FEATURE_PROCESSORS:
            md.request_logits_processors = [
                (i, list(p.logits_processors)) for i, p in enumerate(params)
                if p.logits_processors
            ]
        return md


def _tensor(data, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Small host list or array -> device tensor without blocking the host on accelerators."""
    if isinstance(data, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(data)).to(dtype)
        return t if device.type == "cpu" else t.pin_memory().to(device, non_blocking=True)
    if device.type == "cpu":
        return torch.tensor(data, dtype=dtype)
    return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def _build_random(md, arrays: SamplingArrays, is_greedy: np.ndarray, generators) -> None:
    v = md.vocab_size
    md.temperature = _tensor(np.where(is_greedy, 1.0, arrays.temperature), torch.float32,
                             md.device)
    if not md.all_random:
        md.is_greedy = _tensor(is_greedy, torch.bool, md.device)
    k = arrays.top_k
    top_k = np.where(is_greedy | (k <= 0) | (k >= v), v, k)
    limited = top_k < v
    md.max_top_k = int(top_k[limited].max()) if limited.any() else 0
    if md.max_top_k:
        md.top_k = _tensor(top_k, torch.long, md.device)
    top_p = np.where(is_greedy, 1.0, arrays.top_p)
    if top_p.min() < 1.0:
        md.top_p = _tensor(top_p, torch.float32, md.device)
        md.top_p_needs_sort = bool(((top_p < 1.0) & ~limited).any())
    min_p = np.where(is_greedy, 0.0, arrays.min_p)
    if min_p.max() > 0.0:
        md.min_p = _tensor(min_p, torch.float32, md.device)
    md.generators = {
        i: gen for i, gen in enumerate(generators) if gen is not None and not is_greedy[i]
    }


def _build_penalties(md, pres, freq, rep, output_token_ids, prompt_token_ids) -> None:
    v, device = md.vocab_size, md.device
    rows = [i for i in range(md.num_reqs) if pres[i] or freq[i] or rep[i] != 1.0]
    md.penalty_rows = _tensor(rows, torch.long, device)
    md.output_token_counts = _token_counts(
        [output_token_ids[i] for i in rows], v, device, torch.float32)
    if any(pres[i] for i in rows):
        md.presence_penalties = _tensor([pres[i] for i in rows], torch.float32, device)
    if any(freq[i] for i in rows):
        md.frequency_penalties = _tensor([freq[i] for i in rows], torch.float32, device)
    if any(rep[i] != 1.0 for i in rows):
        md.repetition_penalties = _tensor([rep[i] for i in rows], torch.float32, device)
        md.prompt_token_mask = _token_counts(
            [prompt_token_ids[i] for i in rows], v, device, torch.float32) > 0


def _token_counts(seqs: list[list[int]], vocab_size: int, device, dtype) -> torch.Tensor:
    """[len(seqs), vocab] occurrence counts; padding goes to an extra column, then dropped."""
    max_len = max(map(len, seqs))
    counts = torch.zeros(len(seqs), vocab_size + 1, dtype=dtype, device=device)
    if max_len:
        padded = _tensor([s + [vocab_size] * (max_len - len(s)) for s in seqs],
                         torch.long, device)
        counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=dtype))
    return counts[:, :vocab_size]


def _build_logit_bias(md, params, rows) -> None:
    r, t, b = [], [], []
    for i in rows:
        check_token_ids(params[i], md.vocab_size)
        bias = params[i].logit_bias
        r += [i] * len(bias)
        t += bias.keys()
        b += bias.values()
    md.logit_bias_rows = _tensor(r, torch.long, md.device)
    md.logit_bias_token_ids = _tensor(t, torch.long, md.device)
    md.logit_bias_values = _tensor(b, torch.float32, md.device)


def _build_allowed(md, params, rows) -> None:
    r, t = [], []
    for j, i in enumerate(rows):
        check_token_ids(params[i], md.vocab_size)
        ids = params[i].allowed_token_ids
        r += [j] * len(ids)
        t += ids
    mask = torch.ones(len(rows), md.vocab_size, dtype=torch.bool, device=md.device)
    mask[_tensor(r, torch.long, md.device), _tensor(t, torch.long, md.device)] = False
    md.allowed_rows = _tensor(rows, torch.long, md.device)
    md.disallowed_mask = mask


def _build_min_tokens(md, rows, stop_token_ids) -> None:
    r, t = [], []
    for i in rows:
        # A stop id outside the vocab can never be sampled, so there is nothing to mask.
        ids = [s for s in stop_token_ids[i] if 0 <= s < md.vocab_size]
        r += [i] * len(ids)
        t += ids
    if r:
        md.min_tokens_rows = _tensor(r, torch.long, md.device)
        md.min_tokens_token_ids = _tensor(t, torch.long, md.device)
