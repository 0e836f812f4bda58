"""The synchronous engine: a front end (tokenizer, detokenizer, n-fan-out) over an in-process
engine core. ``LLM`` and the CLI drive it; the HTTP server uses the async client instead."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Optional, Union

from llmserve.config import EngineArgs
from llmserve.engine.core import EngineCore
from llmserve.engine.input_processor import InputProcessor, fan_out_params, read_model_facts
from llmserve.engine.output_processor import OutputProcessor
from llmserve.request import NO_HINTS, EngineCoreRequest, RequestStatus, SchedulingHints
from llmserve.engine.resolver import resolve_engine
from llmserve.outputs import RequestOutput
from llmserve.plugins import get_plugin_manager
from llmserve.sampling_params import SamplingParams


class LLMEngine:
    def __init__(self, args: EngineArgs, plugin_manager=None) -> None:
        if args.data_parallel_size > 1:
            # One process holds one engine core here; replicas need the server's front end.
            raise ValueError(
                f"data_parallel_size={args.data_parallel_size} applies to `llmserve serve` "
                f"(one API server over that many engine cores); the offline LLM / LLMEngine "
                f"runs one engine core: start one process per replica instead")
        pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
        resolved = resolve_engine(args, pm)
        self.config = resolved.config
        self.frontend = InputProcessor.load(read_model_facts(resolved))
        self.tokenizer = self.frontend.tokenizer
        self.vocab_size = self.frontend.vocab_size
        self.core = EngineCore(resolved, pm)
        self.output_processor = OutputProcessor(self.tokenizer)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        return cls(args)

    def default_sampling_params(self) -> SamplingParams:
        return self.frontend.default_sampling_params()

    def add_request(self, request_id: str, prompt: Union[str, list[int]],
                    params: SamplingParams, priority: int = 0,
                    arrival_time: Optional[float] = None,
                    hints: SchedulingHints = NO_HINTS) -> None:
        """Queue a request. Raises ``ValueError`` for a bad prompt or parameters, including a
        structured-output constraint that cannot be compiled (this waits for the compile)."""
        futures = self.submit_request(request_id, prompt, params, priority, arrival_time,
                                      hints)
        self.wait_for_grammars({request_id: futures})

    def submit_request(self, request_id: str, prompt: Union[str, list[int]],
                       params: SamplingParams, priority: int = 0,
                       arrival_time: Optional[float] = None,
                       hints: SchedulingHints = NO_HINTS) -> list[Future]:
        """``add_request`` without waiting: returns the grammar futures of its completions
        (empty when unconstrained), for ``wait_for_grammars``."""
        text, token_ids = self.frontend.tokenize_prompt(prompt)
        self.frontend.validate_request(token_ids, params)
        children = fan_out_params(params)
        core_ids = self.output_processor.add_request(request_id, text, token_ids, children)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        futures = []
        try:
            for cid, child in zip(core_ids, children):
                future = self.core.add_request(EngineCoreRequest(
                    cid, token_ids, child, self.frontend.eos_token_ids, arrival, priority,
                    hints=hints))
                if future is not None:
                    futures.append(future)
        except Exception:
            self.abort_request(request_id)
            raise
        return futures

    def wait_for_grammars(self, futures: dict[str, list[Future]]) -> None:
        """Wait until the grammars of these requests compiled; if one failed, abort all of
        them and raise its ``ValueError``."""
        for request_id, request_futures in futures.items():
            for future in request_futures:
                error = future.exception()
                if error is not None:
                    self.abort_request(list(futures))
                    raise ValueError(str(error)) from None

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
