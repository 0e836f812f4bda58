"""POST /v1/completions: one or several prompts, n completions each, streamed or not."""

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
from llmserve.http.protocol import CompletionRequest
from llmserve.http.serving_common import (
    SSE_DONE,
    CompletionLogprobsBuilder,
    ServingContext,
    merge_streams,
    prompt_logprobs_json,
    scheduling_hints,
    sse,
    start_streams,
    unless_disconnected,
    usage,
)

logger = logging.getLogger(__name__)


def _prompts(ctx: ServingContext, req: CompletionRequest) -> list[tuple[str, list[int]]]:
    """(text, token ids) per prompt; token-id prompts get their decoded text (for echo)."""
    prompt = req.prompt
    items: list[Any] = [prompt] if isinstance(prompt, str) or (
        prompt and isinstance(prompt[0], int)) else list(prompt)
    if not items:
        raise APIError("prompt must not be empty", 400, "prompt")
    tok = ctx.tokenizer
    out = []
    for item in items:
        if isinstance(item, str):
            tok = ctx.require_tokenizer()
            ids = list(tok.encode(item, add_special_tokens=req.add_special_tokens))
            out.append((item, ids))
        else:
            ids = list(item)
            ctx.check_prompt(ids)
            out.append((tok.decode(ids) if tok is not None and req.echo else "", ids))
    return out


async def create_completion(ctx: ServingContext, req: CompletionRequest, raw: Request):
    arrival = time.monotonic()
    model = ctx.model_name(req.model)
    if req.suffix is not None:
        raise APIError("suffix is not supported", 400, "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError("best_of must equal n if given (best-of sampling is not supported)",
                       400, "best_of")
    if req.stream_options is not None and not req.stream:
        raise APIError("stream_options is only allowed when stream is true", 400,
                       "stream_options")
    constraint = output_constraint(req)
    prompts = _prompts(ctx, req)
    for _, ids in prompts:
        ctx.check_prompt(ids)
        ctx.check_length(len(ids), req.max_tokens)
    echo_logprobs = bool(req.echo) and req.logprobs is not None
    prompt_logprobs = req.prompt_logprobs
    if prompt_logprobs is None and echo_logprobs:
        prompt_logprobs = req.logprobs
    params = ctx.sampling_params(req, max_tokens=req.max_tokens, logprobs=req.logprobs,
                                 prompt_logprobs=prompt_logprobs, constraint=constraint)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    kind = RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY
    streams = await start_streams(ctx.engine, [ids for _, ids in prompts], params, request_id,
                                  req.priority, arrival, kind, constraint,
                                  scheduling_hints(req, raw.headers))
    if req.stream:
        return StreamingResponse(_stream(ctx, req, model, request_id, prompts, streams),
                                 media_type="text/event-stream")
    outputs = await unless_disconnected(raw, _collect(ctx, streams))
    return JSONResponse(_response(ctx, req, model, request_id, prompts, outputs))


async def _collect(ctx: ServingContext, streams) -> list:
    results: list = [None] * len(streams)
    async for i, out in merge_streams(streams, ctx.engine):
        results[i] = out
    return results


def _response(ctx, req: CompletionRequest, model: str, request_id: str, prompts, outputs
              ) -> dict[str, Any]:
    tok = ctx.tokenizer
    n = req.n
    choices = []
    num_prompt = num_completion = num_cached = 0
    for i, ((prompt_text, prompt_ids), out) in enumerate(zip(prompts, outputs)):
        num_prompt += len(prompt_ids)
        num_cached += out.num_cached_tokens
        for c in out.outputs:
            num_completion += len(c.token_ids)
            text = prompt_text + c.text if req.echo else c.text
            logprobs = None
            if req.logprobs is not None:
                builder = CompletionLogprobsBuilder(req.logprobs)
                if req.echo:
                    prompt_positions = out.prompt_logprobs or [None] * len(prompt_ids)
                    head = builder.build(prompt_ids, prompt_positions, tok)
                    tail = builder.build(c.token_ids, c.logprobs or [], tok)
                    logprobs = {k: head[k] + tail[k] for k in head}
                else:
                    logprobs = builder.build(c.token_ids, c.logprobs or [], tok)
            choices.append({
                "index": i * n + c.index, "text": text, "logprobs": logprobs,
                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
                "prompt_logprobs": (prompt_logprobs_json(out.prompt_logprobs)
                                    if req.prompt_logprobs is not None else None),
            })
    return {"id": request_id, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": usage(num_prompt, num_completion, num_cached)}


async def _stream(ctx, req: CompletionRequest, model: str, request_id: str, prompts, streams):
    tok = ctx.tokenizer
    n = req.n
    created = int(time.time())
    num_choices = len(prompts) * n
    num_tokens = [0] * num_choices
    cached = [0] * len(prompts)
    started = [False] * num_choices
    builders: Optional[list] = ([CompletionLogprobsBuilder(req.logprobs)
                                 for _ in range(num_choices)]
                                if req.logprobs is not None else None)
    opts = req.stream_options
    include_usage = bool(opts and opts.include_usage)
    continuous = bool(opts and opts.continuous_usage_stats)
    num_prompt = sum(len(ids) for _, ids in prompts)
    try:
        async for i, out in merge_streams(streams, ctx.engine):
            cached[i] = out.num_cached_tokens
            prompt_text, prompt_ids = prompts[i]
            for c in out.outputs:
                idx = i * n + c.index
                num_tokens[idx] += len(c.token_ids)
                text = c.text
                logprobs = None
                first = not started[idx]
                if builders is not None:
                    head = None
                    if first and req.echo:
                        head = builders[idx].build(
                            prompt_ids, out.prompt_logprobs or [None] * len(prompt_ids), tok)
                    if c.token_ids or head is not None:
                        logprobs = builders[idx].build(c.token_ids, c.logprobs or [], tok)
                        if head is not None:
                            logprobs = {k: head[k] + logprobs[k] for k in head}
                if first and req.echo:
                    text = prompt_text + text
                if not text and c.finish_reason is None and logprobs is None:
                    continue
                started[idx] = True
                choice = {"index": idx, "text": text, "logprobs": logprobs,
                          "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
                if first and req.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs)
                chunk = {"id": request_id, "object": "text_completion", "created": created,
                         "model": model, "choices": [choice]}
                if continuous:
                    chunk["usage"] = usage(num_prompt, sum(num_tokens), sum(cached))
                yield sse(chunk)
        if include_usage:
            yield sse({"id": request_id, "object": "text_completion", "created": created,
                       "model": model, "choices": [],
                       "usage": usage(num_prompt, sum(num_tokens), sum(cached))})
    except EngineDeadError as exc:
        yield sse_error(str(exc), 503)
    except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-stream
        logger.exception("completion stream %s failed", request_id)
        yield sse_error(f"internal error: {type(exc).__name__}: {exc}", 500)
    yield SSE_DONE
