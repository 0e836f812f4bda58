"""POST /v1/chat/completions: the conversation (and the tools) through the chat template, then
as a completion; streamed as ``chat.completion.chunk`` deltas or answered whole. Tool calls
are read from the answer as ``llmserve.http.tool_calls`` describes."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from llmserve.engine.async_engine import EngineDeadError, RequestOutputKind
from llmserve.http.errors import APIError, sse_error
from llmserve.http.output_constraints import output_constraint
from llmserve.http.protocol import ChatCompletionRequest, ChatMessage, FunctionTool
from llmserve.http.serving_common import (
    SSE_DONE,
    ServingContext,
    chat_logprobs,
    merge_streams,
    prompt_logprobs_json,
    scheduling_hints,
    sse,
    start_streams,
    unless_disconnected,
    usage,
)
from llmserve.http.tool_calls import (
    ToolCallDeltas,
    ToolChoicePlan,
    finish_reason,
    message_with_tool_calls,
    plan_tool_choice,
    template_tool_calls,
    template_tools,
)

logger = logging.getLogger(__name__)


def render_messages(ctx: ServingContext, messages: list[ChatMessage], *,
                    add_generation_prompt: bool, continue_final_message: bool,
                    chat_template: Optional[str], template_kwargs: Optional[dict[str, Any]],
                    tools: Optional[list[FunctionTool]] = None) -> list[int]:
    """Token ids of the conversation under the chat template; any template failure is a 400
    (it depends on what the client sent)."""
    from llmserve.tokenizer import apply_chat_template

    tok = ctx.require_tokenizer()
    if continue_final_message and (add_generation_prompt or messages[-1].role != "assistant"):
        raise APIError("continue_final_message needs add_generation_prompt=false and a last "
                       "message from the assistant", 400, "continue_final_message")
    conversation = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "\n".join(part.text for part in content)
        entry: dict[str, Any] = {"role": m.role, "content": content or ""}
        if m.name is not None:
            entry["name"] = m.name
        if m.tool_calls is not None:
            entry["tool_calls"] = template_tool_calls(m.tool_calls)
        if m.tool_call_id is not None:
            entry["tool_call_id"] = m.tool_call_id
        conversation.append(entry)
    kwargs = dict(template_kwargs or {})
    if continue_final_message:
        kwargs["continue_final_message"] = True
    try:
        return apply_chat_template(tok, conversation, add_generation_prompt,
                                   chat_template or ctx.chat_template,
                                   tools=template_tools(tools), **kwargs)
    except Exception as exc:  # noqa: BLE001 - jinja, TypeError from bad kwargs, ValueError
        raise APIError(f"the chat template could not be applied: {type(exc).__name__}: {exc}",
                       400, "messages") from None


async def create_chat_completion(ctx: ServingContext, req: ChatCompletionRequest,
                                 raw: Request):
    arrival = time.monotonic()
    model = ctx.model_name(req.model)
    if req.stream_options is not None and not req.stream:
        raise APIError("stream_options is only allowed when stream is true", 400,
                       "stream_options")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError("top_logprobs needs logprobs=true", 400, "top_logprobs")
    plan = plan_tool_choice(req, ctx.tokenizer, ctx.tool_parser, ctx.enable_auto_tool_choice)
    constraint = output_constraint(req, plan.constraint)
    ids = render_messages(ctx, req.messages, add_generation_prompt=req.add_generation_prompt,
                          continue_final_message=req.continue_final_message,
                          chat_template=req.chat_template,
                          template_kwargs=req.chat_template_kwargs, tools=req.tools)
    ctx.check_prompt(ids, "messages")
    if req.max_completion_tokens is not None:
        max_tokens, param = req.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, param = req.max_tokens, "max_tokens"
    ctx.check_length(len(ids), max_tokens, param)
    top_n = (req.top_logprobs or 0) if req.logprobs else None
    params = ctx.sampling_params(req, max_tokens=max_tokens, logprobs=top_n,
                                 prompt_logprobs=req.prompt_logprobs, constraint=constraint,
                                 keep_special_tokens=plan.keeps_special_tokens)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    kind = RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY
    streams = await start_streams(ctx.engine, [ids], params, request_id, req.priority,
                                  arrival, kind, constraint, scheduling_hints(req, raw.headers))
    if req.stream:
        return StreamingResponse(_stream(ctx, req, model, request_id, ids, streams, top_n,
                                         plan),
                                 media_type="text/event-stream")

    async def collect():
        async for _, out in merge_streams(streams, ctx.engine):
            final = out
        return final

    out = await unless_disconnected(raw, collect())
    choices = []
    num_completion = 0
    for c in out.outputs:
        num_completion += len(c.token_ids)
        message, finish = _message(plan, c.text, c.finish_reason)
        choices.append({
            "index": c.index,
            "message": message,
            "logprobs": ({"content": chat_logprobs(c.token_ids, c.logprobs or [], top_n)}
                         if top_n is not None else None),
            "finish_reason": finish, "stop_reason": c.stop_reason,
        })
    body = {"id": request_id, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": usage(len(ids), num_completion, out.num_cached_tokens)}
    if req.prompt_logprobs is not None:
        body["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs)
    return JSONResponse(body)


def _message(plan: ToolChoicePlan, text: str, finish: Optional[str]
             ) -> tuple[dict[str, Any], Optional[str]]:
    """One choice's ``message`` and ``finish_reason``."""
    if plan.make_parser is None:
        return {"role": "assistant", "content": text}, finish
    message = message_with_tool_calls(plan.make_parser().extract_tool_calls(text),
                                      plan.max_calls)
    return message, finish_reason(bool(message.get("tool_calls")), finish)


async def _stream(ctx, req: ChatCompletionRequest, model: str, request_id: str,
                  prompt_ids: list[int], streams, top_n: Optional[int], plan: ToolChoicePlan):
    created = int(time.time())
    opts = req.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = bool(opts and opts.continuous_usage_stats)
    num_tokens = [0] * req.n
    cached = 0
    tool_deltas = ([ToolCallDeltas(plan.make_parser(), plan.max_calls) for _ in range(req.n)]
                   if plan.make_parser is not None else None)

    def chunk(choices: list, usage_now: Optional[dict] = None) -> str:
        body = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices}
        if usage_now is not None:
            body["usage"] = usage_now
        return sse(body)

    def usage_now():
        return usage(len(prompt_ids), sum(num_tokens), cached)

    try:
        for i in range(req.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None}],
                        usage_now() if continuous else None)
        async for _, out in merge_streams(streams, ctx.engine):
            cached = out.num_cached_tokens
            for c in out.outputs:
                num_tokens[c.index] += len(c.token_ids)
                logprobs = None
                if top_n is not None and c.token_ids:
                    logprobs = {"content": chat_logprobs(c.token_ids, c.logprobs or [], top_n)}
                finish = c.finish_reason
                if tool_deltas is not None:
                    reader = tool_deltas[c.index]
                    delta = reader.delta(c.text, finish is not None)
                    finish = finish_reason(reader.made_calls, finish)
                else:
                    delta = {"content": c.text} if c.text else {}
                if not delta and finish is None and logprobs is None:
                    continue
                yield chunk([{"index": c.index, "delta": delta, "logprobs": logprobs,
                              "finish_reason": finish, "stop_reason": c.stop_reason}],
                            usage_now() if continuous else None)
        if include_usage:
            yield chunk([], usage_now())
    except EngineDeadError as exc:
        yield sse_error(str(exc), 503)
    except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-stream
        logger.exception("chat stream %s failed", request_id)
        yield sse_error(f"internal error: {type(exc).__name__}: {exc}", 500)
    yield SSE_DONE
