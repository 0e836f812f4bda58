"""What the completion and chat handlers share: model and prompt checks, request fields ->
``SamplingParams``, logprob formats, client-disconnect handling and stream merging."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, AsyncIterator, Awaitable, Optional, TypeVar

from pydantic import ValidationError
from starlette.requests import Request

from llmserve.engine.async_engine import AsyncEngine, RequestStream
from llmserve.engine.input_processor import validate_prompt
from llmserve.http.errors import APIError, ClientDisconnected, describe_validation_errors
from llmserve.http.output_constraints import OutputConstraint
from llmserve.outputs import Logprob
from llmserve.request import NO_HINTS, SchedulingHints
from llmserve.sampling_params import SamplingParams, check_token_ids
from llmserve.tool_parsers.base import ToolParser

T = TypeVar("T")

#: Request fields that, when given, override generation_config.json's defaults.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                    "presence_penalty", "frequency_penalty", "seed")


@dataclass
class ServingContext:
    """The server's view of its engine, shared by every OpenAI route."""

    engine: AsyncEngine
    model_names: list[str]
    chat_template: Optional[str] = None
    #: ``--tool-call-parser``: reads the calls of ``tool_choice: "auto"`` answers.
    tool_parser: Optional[type[ToolParser]] = None
    #: ``--enable-auto-tool-choice``.
    enable_auto_tool_choice: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def model_name(self, requested: Optional[str]) -> str:
        """The served name a request uses; an unknown one is a 400 naming ``model``."""
        if requested is None:
            return self.model_names[0]
        if requested not in self.model_names:
            raise APIError(f"The model `{requested}` does not exist; this server serves "
                           f"{', '.join(repr(n) for n in self.model_names)}.", 400, "model")
        return requested

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise APIError("this server was started without a tokenizer; send token ids", 400)
        return self.tokenizer

    def check_prompt(self, token_ids: list[int], param: str = "prompt") -> None:
        try:
            validate_prompt(token_ids, self.max_model_len, self.engine.vocab_size)
        except ValueError as exc:
            raise APIError(str(exc), 400, param) from None

    def check_length(self, num_prompt_tokens: int, max_tokens: Optional[int],
                     param: str = "max_tokens") -> None:
        if max_tokens is not None and num_prompt_tokens + max_tokens > self.max_model_len:
            raise APIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} "
                f"in the prompt, {max_tokens} for the completion). Reduce the prompt or "
                f"{param}.", 400, param)

    def sampling_params(self, req: Any, *, max_tokens: Optional[int], logprobs: Optional[int],
                        prompt_logprobs: Optional[int],
                        constraint: Optional[OutputConstraint] = None,
                        keep_special_tokens: bool = False) -> SamplingParams:
        """The request's ``SamplingParams``; ``keep_special_tokens`` overrides the request's
        ``skip_special_tokens`` (a tool parser needs the special tokens its format uses)."""
        values: dict[str, Any] = dict(self.engine.frontend.default_sampling_values)
        for name in _SAMPLING_FIELDS:
            value = getattr(req, name)
            if value is not None:
                values[name] = value
        values.update(
            n=req.n, stop=req.stop, stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos,
            max_tokens=max_tokens, min_tokens=req.min_tokens, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, logit_bias=_logit_bias(req.logit_bias),
            allowed_token_ids=req.allowed_token_ids,
            skip_special_tokens=req.skip_special_tokens and not keep_special_tokens,
            spaces_between_special_tokens=req.spaces_between_special_tokens,
            include_stop_str_in_output=req.include_stop_str_in_output,
            structured_outputs=constraint.params if constraint is not None else None)
        try:
            params = SamplingParams(**values)
        except ValidationError as exc:
            message, param = describe_validation_errors(exc.errors())
            raise APIError(message, 400, param) from None
        try:
            check_token_ids(params, self.engine.vocab_size)
        except ValueError as exc:
            raise APIError(str(exc), 400, _param_in(str(exc))) from None
        return params


def _logit_bias(bias: Optional[dict[str, float]]) -> Optional[dict[int, float]]:
    if bias is None:
        return None
    try:
        return {int(k): v for k, v in bias.items()}
    except ValueError:
        bad = next(k for k in bias if not k.strip().lstrip("-").isdigit())
        raise APIError(f"logit_bias keys must be token ids (integers as strings); got {bad!r}",
                       400, "logit_bias") from None


def _param_in(message: str) -> Optional[str]:
    for name in ("logit_bias", "allowed_token_ids", "stop_token_ids"):
        if name in message:
            return name
    return None


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


# -- logprobs ---------------------------------------------------------------------------------


def _top(position: dict[int, Logprob], top_n: int) -> list[Logprob]:
    ranked = sorted((lp for lp in position.values() if lp.rank is not None and lp.rank <= top_n),
                    key=lambda lp: lp.rank)
    return ranked[:top_n]


class CompletionLogprobsBuilder:
    """OpenAI's legacy completion logprobs: parallel lists, and character offsets."""

    def __init__(self, top_n: int, offset: int = 0) -> None:
        self.top_n = top_n
        self.offset = offset

    def build(self, token_ids: list[int], positions: list[Optional[dict[int, Logprob]]],
              tokenizer) -> dict[str, Any]:
        from llmserve.tokenizer import decode_token

        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for tid, pos in zip(token_ids, positions):
            if pos is None or tid not in pos:  # the first prompt token has no logprob
                text = decode_token(tokenizer, tid) if tokenizer is not None else ""
                token_logprobs.append(None)
                top_logprobs.append(None)
            else:
                chosen = pos[tid]
                text = chosen.decoded_token or ""
                token_logprobs.append(chosen.logprob)
                top_logprobs.append({lp.decoded_token or "": lp.logprob
                                     for lp in _top(pos, self.top_n)})
            tokens.append(text)
            offsets.append(self.offset)
            self.offset += len(text)
        return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens,
                "top_logprobs": top_logprobs}


def chat_logprobs(token_ids: list[int], positions: list[dict[int, Logprob]],
                  top_n: int) -> list[dict[str, Any]]:
    content = []
    for tid, pos in zip(token_ids, positions):
        chosen = pos.get(tid)
        if chosen is None:
            continue
        token = chosen.decoded_token or ""
        content.append({
            "token": token, "logprob": chosen.logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": lp.decoded_token or "", "logprob": lp.logprob,
                              "bytes": list((lp.decoded_token or "").encode())}
                             for lp in _top(pos, top_n)],
        })
    return content


def prompt_logprobs_json(positions) -> Optional[list[Optional[dict[str, Any]]]]:
    """vLLM's ``prompt_logprobs`` field: per prompt position, token id -> logprob info."""
    if positions is None:
        return None
    return [None if pos is None else
            {str(tid): {"logprob": lp.logprob, "rank": lp.rank,
                        "decoded_token": lp.decoded_token} for tid, lp in pos.items()}
            for pos in positions]


# -- disconnects and streams --------------------------------------------------------------------


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it (which aborts its engine
    requests) and raise ``ClientDisconnected``. For non-streaming responses: a stream learns
    of the disconnect from the server, which cancels it."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        raise ClientDisconnected()
    return task.result()


async def merge_streams(streams: list[RequestStream], engine: AsyncEngine
                        ) -> AsyncIterator[tuple[int, Any]]:
    """Yield (stream index, output) from several request streams as outputs arrive; leaving
    early aborts the unfinished ones."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            if not streams[0].finished:
                engine.abort(streams[0].request_id)
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, exc))
        queue.put_nowait((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            if not s.finished:
                engine.abort(s.request_id)


#: Header that names the request's tenant; it wins over the body's ``user``.
TENANT_HEADER = "x-tenant"


def scheduling_hints(req: Any, headers: Mapping[str, str]) -> SchedulingHints:
    """What the scheduling policy learns of a request: its tenant (``X-Tenant``, else the
    OpenAI ``user`` field) and its latency targets."""
    tenant = headers.get(TENANT_HEADER) or req.user
    return SchedulingHints(tenant=tenant, ttft_target_s=req.ttft_target_s,
                           latency_target_s=req.latency_target_s)


async def start_streams(engine: AsyncEngine, prompts: list[list[int]], params: SamplingParams,
                        request_id: str, priority: int, arrival: float, output_kind,
                        constraint: Optional[OutputConstraint] = None,
                        hints: SchedulingHints = NO_HINTS) -> list[RequestStream]:
    """Submit one engine request per prompt; all or none (a later rejection aborts the
    earlier ones).

    The engine accepts a constrained request only once its grammar compiled, so a grammar it
    cannot compile (an invalid regex, a schema it does not support) is a ``ValueError`` here,
    before any response is started: a 400 naming the constraint's field, streaming or not.
    """
    streams: list[RequestStream] = []
    try:
        for i, ids in enumerate(prompts):
            rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            streams.append(await engine.add_request(rid, ids, params, priority=priority,
                                                    arrival_time=arrival,
                                                    output_kind=output_kind, hints=hints))
    except BaseException as exc:
        for s in streams:
            engine.abort(s.request_id)
        if isinstance(exc, ValueError):
            raise APIError(str(exc), 400, constraint.field if constraint else None) from None
        raise
    return streams
