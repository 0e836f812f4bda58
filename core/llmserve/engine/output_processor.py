"""Front-end bookkeeping: turns the core's token outputs into ``RequestOutput`` objects.

Each user request owns one ``_ParentState`` and one ``_ChildState`` per completion (n > 1 is
fanned out into independent core requests). Children detokenize incrementally, collect
logprobs and watch for stop strings; a stop string ends the child here, and the caller tells
the core to stop it.

A request asks for its outputs in one of two kinds (``RequestOutputKind``): ``FINAL_ONLY``
(one ``RequestOutput`` when every completion has finished: ``LLM`` and non-streaming HTTP)
or ``DELTA`` (after every step that changed it, a ``RequestOutput`` holding only what is new:
the completions that advanced, their new text, token ids and logprobs; streaming). Both kinds
end with the same text: the final delta flushes an incomplete trailing character exactly as
the final output does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

from llmserve.request import EngineCoreOutput
from llmserve.outputs import CompletionOutput, Logprob, PromptLogprobs, RequestOutput
from llmserve.sampling_params import SamplingParams
from llmserve.tokenizer import IncrementalDetokenizer, decode_token


class RequestOutputKind(enum.Enum):
    #: One output per request, when all its completions have finished.
    FINAL_ONLY = 0
    #: One output per step that changed the request, holding only what is new.
    DELTA = 1


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
    #: DELTA: token ids (and logprob rows) already sent.
    num_sent: int = 0


@dataclass
class _ParentState:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    children: list[_ChildState]
    prompt_logprobs: Optional[PromptLogprobs] = None
    num_cached_tokens: int = 0
    num_unfinished: int = 0
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY


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
                    child_params: list[SamplingParams],
                    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY) -> list[str]:
        """Register a request and return the core request ids of its completions."""
        if request_id in self._parents:
            raise ValueError(f"request id {request_id!r} is already in use")
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
                              num_unfinished=n, output_kind=output_kind)
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
        """Apply one step's core outputs. Returns (request outputs: finished FINAL_ONLY
        requests and changed DELTA requests, in order of first appearance; core ids stopped by
        a stop string, which the core must be told to finish)."""
        ready: list[RequestOutput] = []
        stopped: list[str] = []
        #: DELTA parents touched this step -> their children that changed, in order.
        deltas: dict[str, tuple[_ParentState, list[_ChildState]]] = {}
        for out in outputs:
            entry = self._children.get(out.request_id)
            if entry is None:
                continue
            parent, child = entry
            # Every completion of an n>1 request computes the prompt; the first one reports it.
            if (out.new_prompt_logprobs is not None and parent.prompt_logprobs is not None
                    and child.index == 0):
                self._add_prompt_logprobs(parent, out.new_prompt_logprobs)
            parent.num_cached_tokens = max(parent.num_cached_tokens, out.num_cached_tokens)
            new_ids = out.new_token_ids
            if new_ids:
                # An EOS or stop token that ended the request is kept in the ids but not in
                # the text, unless include_stop_str_in_output (as in vLLM).
                stop_terminated = (out.finish_reason == "stop"
                                   and not child.params.include_stop_str_in_output)
                self._add_tokens(child, new_ids, out.new_logprobs, stop_terminated)
                if child.finish_reason is not None and not out.finished:
                    stopped.append(out.request_id)
                elif out.finished:
                    child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            elif out.finished and child.finish_reason is None:
                child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            is_delta = parent.output_kind is RequestOutputKind.DELTA
            if is_delta:
                touched = deltas.get(parent.request_id)
                if touched is None:
                    deltas[parent.request_id] = (parent, [child])
                elif touched[1][-1] is not child:
                    touched[1].append(child)
            if child.finish_reason is not None:
                if child.detok is not None and not is_delta:
                    child.detok.get_delta(finished=True)  # flush a trailing partial character
                del self._children[out.request_id]
                parent.num_unfinished -= 1
                if parent.num_unfinished == 0:
                    del self._parents[parent.request_id]
                    if not is_delta:
                        ready.append(self._make_output(parent))
        for parent, children in deltas.values():
            ready.append(self._make_delta(parent, children))
        return ready, stopped

    def _add_tokens(self, child: _ChildState, new_ids: list[int], logprobs,
                    stop_terminated: bool = False) -> None:
        """Append a step's tokens; a stop string in their text finishes the child, and the
        tokens after the one that completed it (a speculative step brings several) go."""
        if child.detok is not None:
            before = len(child.detok.output_token_ids)
            stop = child.detok.update(new_ids, stop_terminated)
            if stop is not None:
                child.finish_reason, child.stop_reason = "stop", stop
                new_ids = new_ids[:len(child.detok.output_token_ids) - before]
        child.token_ids.extend(new_ids)
        if child.logprobs is not None and logprobs is not None:
            rows = zip(logprobs.token_ids, logprobs.logprobs, logprobs.ranks)
            for (ids, lps, rank), _ in zip(rows, new_ids):
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
        # Rows a preempted request recomputes never arrive twice: the scheduler drops them.
        for ids, lps, rank in zip(rows.token_ids, rows.logprobs, rows.ranks):
            parent.prompt_logprobs.append(self._position(ids, lps, rank))

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

    def _make_delta(self, parent: _ParentState, children: list[_ChildState]) -> RequestOutput:
        outputs = []
        for c in children:
            sent, c.num_sent = c.num_sent, len(c.token_ids)
            finished = c.finish_reason is not None
            text = c.detok.get_delta(finished) if c.detok is not None else ""
            outputs.append(CompletionOutput(
                index=c.index,
                text=text,
                token_ids=c.token_ids[sent:],
                cumulative_logprob=c.cumulative_logprob,
                logprobs=c.logprobs[sent:] if c.logprobs is not None else None,
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
            ))
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids,
                             parent.prompt_logprobs, outputs,
                             finished=parent.num_unfinished == 0,
                             num_cached_tokens=parent.num_cached_tokens)
