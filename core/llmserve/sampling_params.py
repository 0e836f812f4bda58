"""How one request is sampled: the vLLM-compatible ``SamplingParams``.

A pydantic model so that a bad value fails at construction with the field's name and the
allowed range, before anything is queued or allocated.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmserve.structured_output.params import StructuredOutputsParams

#: Below this temperature sampling is greedy (argmax), as in vLLM.
SAMPLING_EPS = 1e-5
#: Largest ``logprobs`` / ``prompt_logprobs`` a request may ask for.
MAX_LOGPROBS = 20


class SamplingParams(BaseModel):
    """Sampling settings of one request; field names and meanings follow vLLM."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    n: int = Field(1, ge=1, le=128, description="completions to return for the prompt")
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="0 or -1 disables top-k")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**64)
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    max_tokens: Optional[int] = Field(16, ge=1, description="None means up to the context length")
    min_tokens: int = Field(0, ge=0)
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    prompt_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    logit_bias: Optional[dict[int, float]] = None
    allowed_token_ids: Optional[list[int]] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    detokenize: bool = True
    #: Extra per-request logits processors (see ``llmserve.sample.logits_processor``).
    logits_processors: Optional[list[Any]] = None
    #: Constrain the output to a JSON schema, regex, choice or grammar.
    structured_outputs: Optional[StructuredOutputsParams] = None

    @field_validator("stop", mode="after")
    @classmethod
    def _stop_as_list(cls, v: Union[str, list[str], None]) -> Optional[list[str]]:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else list(v)
        if any(s == "" for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @field_validator("logit_bias", mode="after")
    @classmethod
    def _clamp_bias(cls, v: Optional[dict[int, float]]) -> Optional[dict[int, float]]:
        # OpenAI clamps biases to [-100, 100]; larger values only overflow.
        if v is None:
            return None
        return {int(k): max(-100.0, min(100.0, float(b))) for k, b in v.items()}

    @model_validator(mode="after")
    def _check_relations(self) -> "SamplingParams":
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if self.stop_token_ids is not None and any(t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be non-negative token ids")
        return self

    @property
    def is_greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def stop_strings(self) -> list[str]:
        return self.stop or []  # type: ignore[return-value]

    def all_stop_token_ids(self, eos_token_ids: frozenset[int]) -> frozenset[int]:
        """Token ids that end the request: ``stop_token_ids`` plus EOS unless ``ignore_eos``."""
        ids = set(self.stop_token_ids or ())
        if not self.ignore_eos:
            ids |= eos_token_ids
        return frozenset(ids)


def check_token_ids(params: SamplingParams, vocab_size: int) -> None:
    """Raise ``ValueError`` naming the field if ``params`` refers to a token outside the vocab.

    Front ends call this when a request arrives (it lives here, beside the parameters, so the
    serving front end can without importing the sampler); ``SamplingMetadata.build`` checks
    again for safety.
    """
    for name, ids in (("logit_bias", params.logit_bias), ("allowed_token_ids",
                                                          params.allowed_token_ids)):
        if ids is None:
            continue
        if name == "allowed_token_ids" and not ids:
            raise ValueError("allowed_token_ids must not be empty")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"{name} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
            )


#: Optional sampling features, as bits: the sampler builds only the parts a batch uses.
FEATURE_LOGPROBS = 1
FEATURE_PENALTIES = 2
FEATURE_LOGIT_BIAS = 4
FEATURE_ALLOWED_IDS = 8
FEATURE_MIN_TOKENS = 16
FEATURE_PROCESSORS = 32
#: Features that read a request's output tokens on the host (such requests take no drafts).
OUTPUT_READING_FEATURES = FEATURE_PENALTIES | FEATURE_MIN_TOKENS | FEATURE_PROCESSORS


def features_of(p: SamplingParams) -> int:
    """The optional sampling features a request uses, as a bit set."""
    return ((FEATURE_LOGPROBS if p.logprobs is not None else 0)
            | (FEATURE_PENALTIES if p.presence_penalty or p.frequency_penalty
               or p.repetition_penalty != 1.0 else 0)
            | (FEATURE_LOGIT_BIAS if p.logit_bias else 0)
            | (FEATURE_ALLOWED_IDS if p.allowed_token_ids is not None else 0)
            | (FEATURE_MIN_TOKENS if p.min_tokens else 0)
            | (FEATURE_PROCESSORS if p.logits_processors else 0))
