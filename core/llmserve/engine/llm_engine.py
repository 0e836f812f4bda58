"""The synchronous engine: a front end (tokenizer, detokenizer, n-fan-out) over an in-process
engine core. ``LLM`` and the CLI drive it; the HTTP server uses the async client instead."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Union

from llmserve.config import EngineArgs
from llmserve.engine.core import EngineCore
from llmserve.engine.output_processor import OutputProcessor
from llmserve.engine.request import EngineCoreRequest, RequestStatus
from llmserve.engine.setup import resolve_engine
from llmserve.outputs import RequestOutput
from llmserve.plugins import get_plugin_manager
from llmserve.sample import check_token_ids
from llmserve.sampling_params import SamplingParams
from llmserve.tokenizer import eos_token_ids, load_tokenizer

#: generation_config.json keys that become default sampling values (as vLLM does).
_GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_generation_config(model_dir: str) -> dict[str, Any]:
    path = Path(model_dir) / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class LLMEngine:
    def __init__(self, args: EngineArgs, plugin_manager=None) -> None:
        pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
        resolved = resolve_engine(args, pm)
        self.config = resolved.config
        gen = read_generation_config(self.config.model.model)
        if resolved.skip_tokenizer_init:
            self.tokenizer = None
            eos = gen.get("eos_token_id", resolved.hf_config.get("eos_token_id"))
            self.eos_token_ids = frozenset([eos] if isinstance(eos, int) else eos or [])
        else:
            self.tokenizer = load_tokenizer(self.config.model.tokenizer)
            self.eos_token_ids = eos_token_ids(self.tokenizer, gen.get("eos_token_id"))
        self.default_sampling_values = {k: gen[k] for k in _GENERATION_DEFAULTS if k in gen}
        self.vocab_size = resolved.hf_config["vocab_size"]
        self.core = EngineCore(resolved, pm)
        self.output_processor = OutputProcessor(self.tokenizer)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        return cls(args)

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.default_sampling_values)

    def tokenize_prompt(self, prompt: Union[str, list[int]]) -> tuple[Optional[str], list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; this engine was started with "
                                 "skip_tokenizer_init=True, so pass token ids")
            return prompt, self.tokenizer.encode(prompt)
        return None, list(prompt)

    def validate_prompt(self, token_ids: list[int]) -> None:
        max_len = self.config.model.max_model_len
        if not token_ids:
            raise ValueError("prompt must contain at least one token")
        if len(token_ids) >= max_len:
            raise ValueError(f"prompt is {len(token_ids)} tokens; it must be shorter than "
                             f"max_model_len={max_len} to leave room for output")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size}); got {bad[:5]}")

    def add_request(self, request_id: str, prompt: Union[str, list[int]],
                    params: SamplingParams, priority: int = 0,
                    arrival_time: Optional[float] = None) -> None:
        text, token_ids = self.tokenize_prompt(prompt)
        self.validate_prompt(token_ids)
        check_token_ids(params, self.vocab_size)
        children = self._child_params(params)
        core_ids = self.output_processor.add_request(request_id, text, token_ids, children)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        for cid, child in zip(core_ids, children):
            self.core.add_request(EngineCoreRequest(cid, token_ids, child, self.eos_token_ids,
                                                    arrival, priority))

    @staticmethod
    def _child_params(params: SamplingParams) -> list[SamplingParams]:
        """One n=1 parameter set per completion; seeded children get seed + index so that
        they differ from each other but stay reproducible."""
        if params.n == 1:
            return [params]
        return [params.model_copy(update={
            "n": 1, "seed": None if params.seed is None else params.seed + i})
            for i in range(params.n)]

    def abort_request(self, request_ids: Union[str, list[str]]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else request_ids
        core_ids = [cid for rid in ids for cid in self.output_processor.core_ids(rid)]
        for rid in ids:
            self.output_processor.abort(rid)
        self.core.abort_requests(core_ids)

    def has_unfinished_requests(self) -> bool:
        return len(self.output_processor) > 0 or self.core.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the requests that finished in it."""
        finished, stopped = self.output_processor.process(self.core.step())
        if stopped:
            self.core.abort_requests(stopped, RequestStatus.FINISHED_STOPPED)
        return finished
