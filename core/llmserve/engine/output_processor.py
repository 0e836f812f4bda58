"""Front-end bookkeeping: turns the core's token outputs into ``RequestOutput`` objects.

Each user request owns one ``_ParentState`` and one ``_ChildState`` per completion (n > 1 is
fanned out into independent core requests). Children detokenize incrementally, collect
logprobs and watch for stop strings; a stop string ends the child here, and the caller tells
the core to stop it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from llmserve.engine.request import EngineCoreOutput
from llmserve.outputs import CompletionOutput, Logprob, PromptLogprobs, RequestOutput
from llmserve.sampling_params import SamplingParams
from llmserve.tokenizer import IncrementalDetokenizer, decode_token


@dataclass
class _ChildState:
    index: int
    params: SamplingParams
    detok: Optional[IncrementalDetokenizer]
    token_ids: list[int] = field(default_factory=list)
    logprobs: Optional[list] = None
    cumulative_logprob: Optional[float] = None
    finish_reason: Optional[str] = None
    stop_reason: object = None


@dataclass
class _ParentState:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    children: list[_ChildState]
    prompt_logprobs: Optional[PromptLogprobs] = None
    num_cached_tokens: int = 0
    num_unfinished: int = 0


def child_request_id(request_id: str, index: int, n: int) -> str:
    return request_id if n == 1 else f"{index}_{request_id}"


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._parents: dict[str, _ParentState] = {}
        #: core request id -> (parent, child)
        self._children: dict[str, tuple[_ParentState, _ChildState]] = {}

    def __len__(self) -> int:
        return len(self._parents)

    def add_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                    child_params: list[SamplingParams]) -> list[str]:
        """Register a request and return the core request ids of its completions."""
        n = len(child_params)
        children = []
        for i, params in enumerate(child_params):
            detok = (IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params)
                     if params.detokenize and self.tokenizer is not None else None)
            children.append(_ChildState(
                i, params, detok,
                logprobs=[] if params.logprobs is not None else None,
                cumulative_logprob=0.0 if params.logprobs is not None else None))
        parent = _ParentState(request_id, prompt, prompt_token_ids, children,
                              prompt_logprobs=([None] if child_params[0].prompt_logprobs
                                               is not None else None),
                              num_unfinished=n)
        self._parents[request_id] = parent
        ids = [child_request_id(request_id, i, n) for i in range(n)]
        for cid, child in zip(ids, children):
            self._children[cid] = (parent, child)
        return ids

    def core_ids(self, request_id: str) -> list[str]:
        parent = self._parents.get(request_id)
        if parent is None:
            return []
        n = len(parent.children)
        return [child_request_id(request_id, i, n) for i in range(n)]

    def abort(self, request_id: str) -> None:
        for cid in self.core_ids(request_id):
            self._children.pop(cid, None)
        self._parents.pop(request_id, None)

    def process(self, outputs: list[EngineCoreOutput]
                ) -> tuple[list[RequestOutput], list[str]]:
        """Apply one step's core outputs. Returns (finished request outputs, core ids stopped
        by a stop string, which the core must be told to finish)."""
        finished: list[RequestOutput] = []
        stopped: list[str] = []
        for out in outputs:
            entry = self._children.get(out.request_id)
            if entry is None:
                continue
            parent, child = entry
            if out.new_prompt_logprobs is not None and parent.prompt_logprobs is not None:
                self._add_prompt_logprobs(parent, out.new_prompt_logprobs)
            parent.num_cached_tokens = max(parent.num_cached_tokens, out.num_cached_tokens)
            new_ids = out.new_token_ids
            if new_ids:
                self._add_tokens(child, new_ids, out.new_logprobs)
                if child.finish_reason is not None and not out.finished:
                    stopped.append(out.request_id)
                elif out.finished:
                    child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            elif out.finished and child.finish_reason is None:
                child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            if child.finish_reason is not None:
                del self._children[out.request_id]
                parent.num_unfinished -= 1
                if parent.num_unfinished == 0:
                    del self._parents[parent.request_id]
                    finished.append(self._make_output(parent))
        return finished, stopped

    def _add_tokens(self, child: _ChildState, new_ids: list[int], logprobs) -> None:
        """Append a step's tokens; a stop string in their text finishes the child."""
        if child.detok is not None:
            stop = child.detok.update(new_ids)
            if stop is not None:
                child.finish_reason, child.stop_reason = "stop", stop
        child.token_ids.extend(new_ids)
        if child.logprobs is not None and logprobs is not None:
            for ids, lps, rank in zip(logprobs.token_ids, logprobs.logprobs, logprobs.ranks):
                child.logprobs.append(self._position(ids, lps, rank))
                child.cumulative_logprob += lps[0]

    def _position(self, ids: list[int], lps: list[float], rank: int) -> dict[int, Logprob]:
        tok = self.tokenizer
        pos = {ids[0]: Logprob(lps[0], rank, decode_token(tok, ids[0]) if tok else None)}
        for r, (tid, lp) in enumerate(zip(ids[1:], lps[1:]), start=1):
            if tid not in pos:
                pos[tid] = Logprob(lp, r, decode_token(tok, tid) if tok else None)
        return pos

    def _add_prompt_logprobs(self, parent: _ParentState, rows) -> None:
        # A request resumed after preemption recomputes its prompt: keep the first copy.
        room = len(parent.prompt_token_ids) - len(parent.prompt_logprobs)
        for i in range(min(room, len(rows.token_ids))):
            parent.prompt_logprobs.append(
                self._position(rows.token_ids[i], rows.logprobs[i], rows.ranks[i]))

    def _make_output(self, parent: _ParentState) -> RequestOutput:
        outputs = [
            CompletionOutput(
                index=c.index,
                text=c.detok.output_text if c.detok is not None else "",
                token_ids=c.token_ids,
                cumulative_logprob=c.cumulative_logprob,
                logprobs=c.logprobs,
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
            )
            for c in parent.children
        ]
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids,
                             parent.prompt_logprobs, outputs, finished=True,
                             num_cached_tokens=parent.num_cached_tokens)
