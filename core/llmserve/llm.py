"""``LLM``: the offline API, a drop-in for vLLM's ``LLM`` class."""

from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence, Union

from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
from llmserve.logger import configure_default_logging
from llmserve.outputs import RequestOutput
from llmserve.request import NO_HINTS, SchedulingHints
from llmserve.sampling_params import SamplingParams
from llmserve.tokenizer import apply_chat_template

PromptType = Union[str, list[int], dict[str, Any]]


class LLM:
    """Generate text for a batch of prompts with continuous batching.

    ``LLM()`` with no model serves the small embedded default model, so it works offline.
    Keyword arguments are vLLM's engine arguments (see ``llmserve.config.EngineArgs``); an
    invalid value raises a ``ValueError`` naming the field and the allowed range.
    """

    def __init__(self, model: Optional[str] = None, **kwargs: Any) -> None:
        configure_default_logging()
        self.llm_engine = LLMEngine(EngineArgs(model=model, **kwargs))
        self._counter = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.llm_engine.default_sampling_params()

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        priority: Optional[list[int]] = None,
        scheduling_hints: Union[SchedulingHints, Sequence[SchedulingHints], None] = None,
    ) -> list[RequestOutput]:
        """Complete each prompt: text, a token-id list, or ``{"prompt": ...}`` /
        ``{"prompt_token_ids": [...]}``. Outputs come back in the order of ``prompts``.

        ``priority`` (one per prompt) orders requests under the ``priority`` policy;
        ``scheduling_hints`` (one for all or one per prompt: tenant, latency targets) feed
        policies that read them, such as ``fair`` and ``deadline``."""
        items = _as_prompt_list(prompts)
        params = self._params_list(sampling_params, len(items))
        if priority is not None and len(priority) != len(items):
            raise ValueError(f"priority must have one entry per prompt ({len(items)}), "
                             f"got {len(priority)}")
        if scheduling_hints is None or isinstance(scheduling_hints, SchedulingHints):
            hints = [scheduling_hints or NO_HINTS] * len(items)
        else:
            hints = list(scheduling_hints)
            if len(hints) != len(items):
                raise ValueError(f"scheduling_hints must be one SchedulingHints or one per "
                                 f"prompt ({len(items)}), got {len(hints)}")
        return self._run(items, params, use_tqdm, priority, hints)

    def chat(
        self,
        messages: Union[list[dict[str, Any]], list[list[dict[str, Any]]]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = True,
        tools: Optional[list[dict[str, Any]]] = None,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of messages) or to a list of them,
        formatted by the tokenizer's chat template (or ``chat_template``). ``tools`` (OpenAI
        function tools) reach the template, as in vLLM; to force a call, constrain the
        output with ``SamplingParams(structured_outputs=...)``."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tok = self.get_tokenizer()
        prompts: list[PromptType] = [
            {"prompt_token_ids": apply_chat_template(tok, conv, add_generation_prompt,
                                                     chat_template, tools)}
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _params_list(self, sampling_params, n: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.get_default_sampling_params()] * n
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * n
        params = list(sampling_params)
        if len(params) != n:
            raise ValueError(f"sampling_params must be one SamplingParams or one per prompt "
                             f"({n}), got {len(params)}")
        return params

    def _run(self, items, params, use_tqdm, priority, hints) -> list[RequestOutput]:
        engine = self.llm_engine
        order: dict[str, int] = {}
        grammars = {}
        try:
            for i, (item, p) in enumerate(zip(items, params)):
                rid = str(next(self._counter))
                order[rid] = i
                futures = engine.submit_request(rid, item, p,
                                                priority=priority[i] if priority else 0,
                                                hints=hints[i])
                if futures:
                    grammars[rid] = futures
            # Grammars compile in parallel while the rest are added; a bad one fails the call.
            engine.wait_for_grammars(grammars)
        except Exception:
            engine.abort_request(list(order))
            raise
        results: list[Optional[RequestOutput]] = [None] * len(items)
        bar = None
        if use_tqdm and len(items) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="Processed prompts", dynamic_ncols=True)
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    results[order[out.request_id]] = out
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]


def _as_prompt_list(prompts) -> list[Union[str, list[int]]]:
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    elif isinstance(prompts, list) and prompts and isinstance(prompts[0], int):
        prompts = [prompts]
    out: list[Union[str, list[int]]] = []
    for p in prompts:
        if isinstance(p, dict):
            if "prompt_token_ids" in p:
                out.append(list(p["prompt_token_ids"]))
            elif "prompt" in p:
                out.append(p["prompt"])
            else:
                raise ValueError("a dict prompt needs 'prompt' or 'prompt_token_ids'")
        elif isinstance(p, (str, list)):
            out.append(p)
        else:
            raise ValueError(f"a prompt must be a str, a list of token ids or a dict; got "
                             f"{type(p).__name__}")
    return out
