"""Logits processors: the interface that structured outputs and plugins plug into.

A ``LogitsProcessor`` is batch-level: it sees the logits of every request that samples this
step at once and reads whatever per-request data it needs from the ``SamplingMetadata``.
That keeps the hot path in batched tensor ops; a per-request Python callable
(``SamplingParams.logits_processors``, vLLM v0 style) is supported too, but only through the
one built-in processor that loops over the rows that have one.

Where processors run inside ``Sampler.forward``::

    logits -> float32 -> raw logprobs (log_softmax, if any request asked)
           -> Sampler.logits_processors, in order   (built-ins first, then plugin ones)
           -> penalties -> greedy argmax | temperature, min-p, top-k, top-p, sample

So a processor never changes the logprobs a request gets back (vLLM v1's "raw logprobs"),
acts on greedy and random rows alike, and runs before penalties and temperature. A token set
to ``-inf`` here stays excluded: penalties, temperature and the truncations all keep ``-inf``
at ``-inf``. A row with every token at ``-inf`` has no defined sample.

Plugins return ``{name: class}`` from the ``llmserve_logits_processors`` hook; the runner
instantiates them with ``make_logits_processors`` (no constructor arguments) once per sampler.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llmserve.sample.metadata import SamplingMetadata


class LogitsProcessor(ABC):
    """A batch-level logits transform, called once per step (see the module docstring).

    Subclasses take no constructor arguments and keep no per-request state: everything a step
    needs is on ``md`` (``md.params[i]``, ``md.output_token_ids[i]``, ``md.vocab_size``,
    ``md.device``...). ``apply`` must not sync the device with the host.
    """

    @abstractmethod
    def apply(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """Return the processed logits.

        ``logits`` is float32 ``[md.num_reqs, vocab]``, row i belonging to ``md.params[i]``.
        Editing it in place and returning it is allowed (and cheapest). Return it unchanged,
        quickly, when no request of the batch needs this processor.
        """


class AllowedTokenIdsProcessor(LogitsProcessor):
    """``allowed_token_ids``: every other token of that request's row goes to ``-inf``."""

    def apply(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        if md.allowed_rows is None:
            return logits
        rows = md.allowed_rows
        logits[rows] = logits[rows].masked_fill_(md.disallowed_mask, float("-inf"))
        return logits


class LogitBiasProcessor(LogitsProcessor):
    """``logit_bias``: add each request's bias to its listed tokens (OpenAI semantics)."""

    def apply(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        if md.logit_bias_rows is None:
            return logits
        return logits.index_put_(
            (md.logit_bias_rows, md.logit_bias_token_ids), md.logit_bias_values, accumulate=True
        )


class MinTokensProcessor(LogitsProcessor):
    """``min_tokens``: EOS and stop token ids go to ``-inf`` until enough tokens are out.

    The metadata lists only the rows still below their ``min_tokens`` this step.
    """

    def apply(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        if md.min_tokens_rows is None:
            return logits
        neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
        return logits.index_put_((md.min_tokens_rows, md.min_tokens_token_ids), neg_inf)


class RequestLogitsProcessors(LogitsProcessor):
    """``SamplingParams.logits_processors``: vLLM v0 per-request callables.

    Each callable is ``fn(output_token_ids, logits_row) -> logits_row`` or
    ``fn(prompt_token_ids, output_token_ids, logits_row) -> logits_row``; the id lists must
    not be mutated. This loops in Python over the rows that have callables, so it costs
    nothing for the others.
    """

    def apply(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        for row, fns in md.request_logits_processors:
            output_ids = md.output_token_ids[row]
            row_logits = logits[row]
            for fn in fns:
                if takes_prompt_ids(fn):
                    row_logits = fn(md.prompt_token_ids[row], output_ids, row_logits)
                else:
                    row_logits = fn(output_ids, row_logits)
            logits[row] = row_logits
        return logits


def takes_prompt_ids(fn: Callable) -> bool:
    """Whether a per-request callable has the 3-argument (prompt, output, logits) form."""
    params = inspect.signature(fn).parameters.values()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    num_required = sum(
        1 for p in params if p.kind in positional and p.default is inspect.Parameter.empty
    )
    return num_required == 3


#: The core's processors, in the order they run; what the core's default plugin returns from
#: the ``llmserve_logits_processors`` hook.
BUILTIN_LOGITS_PROCESSORS: dict[str, type[LogitsProcessor]] = {
    "allowed_token_ids": AllowedTokenIdsProcessor,
    "logit_bias": LogitBiasProcessor,
    "min_tokens": MinTokensProcessor,
    "request_logits_processors": RequestLogitsProcessors,
}


def make_logits_processors(
    classes: Iterable[type[LogitsProcessor]] = (),
) -> list[LogitsProcessor]:
    """Instantiate the built-ins, then ``classes`` in order, each class once.

    Pass the merged values of the ``llmserve_logits_processors`` hook; whether or not they
    include the built-ins, those run first and exactly once, so the ``SamplingParams`` fields
    they implement always take effect.
    """
    seen: set[type] = set()
    processors: list[LogitsProcessor] = []
    for cls in (*BUILTIN_LOGITS_PROCESSORS.values(), *classes):
        if cls not in seen:
            seen.add(cls)
            processors.append(cls())
    return processors
