"""Sampling: logits -> tokens (+ logprobs), with vLLM v1 semantics."""

from llmserve.sample.logits_processor import (
    BUILTIN_LOGITS_PROCESSORS,
    LogitsProcessor,
    make_logits_processors,
)
from llmserve.sample.metadata import SamplingMetadata
from llmserve.sample.sampler import (
    LogprobsTensors,
    Sampler,
    SamplerOutput,
    compute_prompt_logprobs,
    gather_logprobs,
)
from llmserve.sampling_params import check_token_ids

__all__ = [
    "BUILTIN_LOGITS_PROCESSORS",
    "LogitsProcessor",
    "LogprobsTensors",
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "check_token_ids",
    "compute_prompt_logprobs",
    "gather_logprobs",
    "make_logits_processors",
]
