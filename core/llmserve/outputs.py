"""What a finished or streaming request returns; the shapes follow vLLM's output types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class Logprob:
    """Log-probability of one candidate token, its rank (1 = most likely) and its text."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


#: One position: candidate token id -> Logprob (the chosen token plus the top-N).
PositionLogprobs = dict[int, Logprob]
#: One entry per generated token.
SampleLogprobs = list[PositionLogprobs]
#: One entry per prompt token; the first is None (nothing predicts the first token).
PromptLogprobs = list[Optional[PositionLogprobs]]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[SampleLogprobs]
    finish_reason: Optional[str] = None
    #: The stop string or stop token id that ended the completion; None for EOS or length.
    stop_reason: Union[int, str, None] = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    prompt_logprobs: Optional[PromptLogprobs]
    outputs: list[CompletionOutput]
    finished: bool
    #: Prompt tokens served from the prefix cache (reported as cached tokens in usage).
    num_cached_tokens: int = 0
    metrics: dict = field(default_factory=dict)
