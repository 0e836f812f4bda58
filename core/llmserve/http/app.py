"""The FastAPI application: error handlers, API-key check, and the routes every plugin
contributes through ``llmserve_http_routes`` (the bundled OpenAI routes among them)."""

from __future__ import annotations

import hashlib
import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from fastapi import FastAPI

from llmserve.http.errors import error_response, install_error_handlers

#: Paths that need the API key when keys are configured (as in vLLM: the API, not the
#: operational endpoints /health, /metrics, /version and the docs).
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


@dataclass(frozen=True)
class ServerOptions:
    """Server settings route plugins may read from ``app.state.llmserve``."""

    chat_template: Optional[str] = None
    metrics: Any = None
    #: The ``ToolParser`` class ``--tool-call-parser`` names, or None.
    tool_parser: Optional[type] = None
    enable_auto_tool_choice: bool = False


class APIKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on the API paths.

    Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against every
    configured key without stopping early, so the time taken says nothing about how much
    of a key was right (nor, thanks to the digests, about its length).
    """

    def __init__(self, app, api_keys: Sequence[str]) -> None:
        self.app = app
        self._digests = [hashlib.sha256(k.encode()).digest() for k in api_keys]

    def is_valid(self, token: bytes) -> bool:
        digest = hashlib.sha256(token).digest()
        ok = False
        for key in self._digests:
            ok |= hmac.compare_digest(digest, key)
        return ok

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or scope["method"] == "OPTIONS"
                or not scope["path"].startswith(PROTECTED_PREFIXES)):
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
                break
        if token is None or not self.is_valid(token):
            message = ("Missing API key: send 'Authorization: Bearer <key>'." if token is None
                       else "Invalid API key.")
            response = error_response(message, 401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(engine, plugin_manager=None, *, api_keys: Sequence[str] = (),
              chat_template: Optional[str] = None, metrics=None,
              tool_call_parser: Optional[str] = None, enable_auto_tool_choice: bool = False,
              shutdown_engine: bool = True) -> FastAPI:
    """The server's application for a started ``AsyncEngine``.

    ``tool_call_parser``: the name of the ``llmserve_tool_parsers`` parser that reads
    ``tool_choice: "auto"`` answers (a ``ValueError`` if no plugin contributes it);
    ``enable_auto_tool_choice`` allows that choice. ``shutdown_engine``: stop the engine when
    the application shuts down (after the server has drained its in-flight requests).
    """
    from llmserve import __version__
    from llmserve.http.tool_calls import resolve_tool_parser
    from llmserve.plugins import get_plugin_manager

    pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
    tool_parser = resolve_tool_parser(pm, tool_call_parser)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if shutdown_engine:
            await engine.shutdown()

    app = FastAPI(
        title="llmserve",
        version=__version__,
        description="OpenAI-compatible API of the llmserve inference engine.",
        lifespan=lifespan,
    )
    app.state.llmserve = ServerOptions(chat_template=chat_template, metrics=metrics,
                                       tool_parser=tool_parser,
                                       enable_auto_tool_choice=enable_auto_tool_choice)
    install_error_handlers(app)
    if api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=list(api_keys))
    pm.hook.llmserve_http_routes(app=app, engine_client=engine, config=engine.config)
    # Unknown paths and methods get OpenAI's error body too (installed by the handlers);
    # this keeps a bare 404 from FastAPI's router consistent with them.
    app.router.default = _not_found
    return app


async def _not_found(scope, receive, send) -> None:
    response = error_response(f"no route for {scope.get('method', '')} {scope.get('path', '')}",
                              404)
    await response(scope, receive, send)
