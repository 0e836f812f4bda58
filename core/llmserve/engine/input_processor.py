"""What every front end needs besides the engine core: the tokenizer, the EOS ids, the
generation-config defaults and request validation.

``LLMEngine`` (in-process core) and ``AsyncEngine`` (core in its own process) share these, so
a prompt or a sampling value that one rejects the other rejects with the same message. Both
build their ``InputProcessor`` from ``ModelFacts``: plain values that the engine core reads
from the model directory and, when it runs in its own process, sends in its ready message,
so that the serving front end imports no torch, model, platform or sampler code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from llmserve.sampling_params import SamplingParams, check_token_ids

#: generation_config.json keys that become default sampling values (as vLLM does).
GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_generation_config(model_dir: str) -> dict[str, Any]:
    path = Path(model_dir) / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class ModelFacts:
    """What a front end must know about the model to tokenize, validate and end requests."""

    vocab_size: int
    max_model_len: int
    #: Tokenizer directory or hub id; None when the engine runs on token ids only
    #: (``skip_tokenizer_init``).
    tokenizer: Optional[str]
    #: generation_config.json's ``eos_token_id`` (an int or a list: chat models such as
    #: Llama 3 list several), else config.json's, as HF's ``GenerationConfig`` falls back;
    #: the tokenizer's EOS joins these.
    eos_token_id: Union[int, list[int], None]
    #: generation_config.json's sampling defaults (its ``GENERATION_DEFAULTS`` keys).
    default_sampling_values: dict[str, Any] = field(default_factory=dict)


def read_model_facts(resolved) -> ModelFacts:
    """The ``ModelFacts`` of a ``ResolvedEngine`` (its config.json and model directory)."""
    config = resolved.config
    gen = read_generation_config(config.model.model)
    return ModelFacts(
        vocab_size=resolved.hf_config["vocab_size"],
        max_model_len=config.model.max_model_len,
        tokenizer=None if resolved.skip_tokenizer_init else config.model.tokenizer,
        eos_token_id=gen.get("eos_token_id", resolved.hf_config.get("eos_token_id")),
        default_sampling_values={k: gen[k] for k in GENERATION_DEFAULTS if k in gen},
    )


@dataclass
class InputProcessor:
    """The front end's view of a resolved engine (nothing here needs the model weights)."""

    tokenizer: Any
    eos_token_ids: frozenset[int]
    vocab_size: int
    max_model_len: int
    default_sampling_values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, facts: ModelFacts) -> "InputProcessor":
        """Load the tokenizer ``facts`` name (if any) and gather the EOS ids."""
        from llmserve.tokenizer import eos_token_ids, load_tokenizer

        tokenizer = load_tokenizer(facts.tokenizer) if facts.tokenizer is not None else None
        return cls(tokenizer=tokenizer,
                   eos_token_ids=eos_token_ids(tokenizer, facts.eos_token_id),
                   vocab_size=facts.vocab_size,
                   max_model_len=facts.max_model_len,
                   default_sampling_values=dict(facts.default_sampling_values))

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.default_sampling_values)

    def tokenize_prompt(self, prompt: Union[str, list[int]]) -> tuple[Optional[str], list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; this engine was started with "
                                 "skip_tokenizer_init=True, so pass token ids")
            return prompt, self.tokenizer.encode(prompt)
        return None, list(prompt)

    def validate_request(self, token_ids: list[int], params: SamplingParams) -> None:
        """Raise ``ValueError`` naming the problem if the request cannot run."""
        validate_prompt(token_ids, self.max_model_len, self.vocab_size)
        check_token_ids(params, self.vocab_size)


def validate_prompt(token_ids: list[int], max_model_len: int, vocab_size: int) -> None:
    if not token_ids:
        raise ValueError("prompt must contain at least one token")
    if len(token_ids) >= max_model_len:
        raise ValueError(f"prompt is {len(token_ids)} tokens; it must be shorter than "
                         f"max_model_len={max_model_len} to leave room for output")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token ids must be in [0, {vocab_size}); got {bad[:5]}")


def fan_out_params(params: SamplingParams) -> list[SamplingParams]:
    """One n=1 parameter set per completion; seeded children get seed + index so that
    they differ from each other but stay reproducible."""
    if params.n == 1:
        return [params]
    return [params.model_copy(update={
        "n": 1, "seed": None if params.seed is None else params.seed + i})
        for i in range(params.n)]
