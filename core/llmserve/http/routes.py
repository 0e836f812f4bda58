"""The bundled HTTP plugin's routes: OpenAI's API plus tokenize, health, version, metrics.

Registered through the ``llmserve_http_routes`` hook like any plugin's routes.
"""

from __future__ import annotations

from typing import Union

from fastapi import APIRouter, FastAPI, Request, Response

from llmserve.http.errors import APIError, error_response
from llmserve.http.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    VersionResponse,
)
from llmserve.http.serving_common import ServingContext

_ERRORS = {400: {"model": ErrorResponse, "description": "invalid request"},
           401: {"model": ErrorResponse, "description": "missing or wrong API key"},
           503: {"model": ErrorResponse, "description": "waiting queue full, or engine gone"}}
_STREAMING = {200: {"content": {"application/json": {},
                                "text/event-stream": {"schema": {"type": "string"}}},
                    "description": "JSON, or server-sent events when stream is true"}}


def register_routes(app: FastAPI, engine, config) -> None:
    options = getattr(app.state, "llmserve", None)
    ctx = ServingContext(engine, [config.model.served_model_name],
                         chat_template=getattr(options, "chat_template", None),
                         tool_parser=getattr(options, "tool_parser", None),
                         enable_auto_tool_choice=getattr(options, "enable_auto_tool_choice",
                                                         False))
    metrics = getattr(options, "metrics", None)
    router = APIRouter()

    @router.get("/health", responses={503: {"model": ErrorResponse}})
    async def health() -> Response:
        """200 while the engine core runs; 503 once it is gone."""
        if engine.is_running:
            return Response(status_code=200)
        reason = engine.dead_reason or "the engine is shut down"
        return error_response(f"the engine core is not running: {reason}", 503)

    @router.get("/version", response_model=VersionResponse)
    async def version():
        from llmserve import __version__

        return {"version": __version__}

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus text format; names start with ``llmserve:``."""
        if metrics is None:
            raise APIError("metrics are not enabled on this server", 404)
        from llmserve.http.metrics import CONTENT_TYPE

        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models():
        cards = [ModelCard(id=name, created=ctx.created, root=config.model.model,
                           max_model_len=config.model.max_model_len)
                 for name in ctx.model_names]
        return ModelList(data=cards)

    @router.post("/v1/completions", response_model=CompletionResponse,
                 responses={**_ERRORS, **_STREAMING})
    async def completions(body: CompletionRequest, raw: Request):
        from llmserve.http.serving_completions import create_completion

        return await create_completion(ctx, body, raw)

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
                 responses={**_ERRORS, **_STREAMING})
    async def chat_completions(body: ChatCompletionRequest, raw: Request):
        from llmserve.http.serving_chat import create_chat_completion

        return await create_chat_completion(ctx, body, raw)

    @router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: Union[TokenizeCompletionRequest, TokenizeChatRequest]):
        ctx.model_name(body.model)
        if isinstance(body, TokenizeChatRequest):
            from llmserve.http.serving_chat import render_messages

            ids = render_messages(ctx, body.messages,
                                  add_generation_prompt=body.add_generation_prompt,
                                  continue_final_message=body.continue_final_message,
                                  chat_template=body.chat_template,
                                  template_kwargs=body.chat_template_kwargs, tools=body.tools)
        else:
            tok = ctx.require_tokenizer()
            ids = list(tok.encode(body.prompt, add_special_tokens=body.add_special_tokens))
        return TokenizeResponse(count=len(ids), max_model_len=ctx.max_model_len, tokens=ids)

    @router.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest):
        ctx.model_name(body.model)
        tok = ctx.require_tokenizer()
        bad = [t for t in body.tokens if not 0 <= t < engine.vocab_size]
        if bad:
            raise APIError(f"tokens must be in [0, {engine.vocab_size}); got {bad[:5]}", 400,
                           "tokens")
        return DetokenizeResponse(prompt=tok.decode(body.tokens))

    app.include_router(router)
