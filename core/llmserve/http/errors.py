"""Every error the server returns has OpenAI's body:
``{"error": {"message": ..., "type": ..., "param": ..., "code": <status>}}``.

- 400 ``BadRequestError``: invalid JSON, wrong types, out-of-range values, unknown fields or
  model, a prompt that does not fit the context (``param`` names the field when there is one);
- 401 ``AuthenticationError``: missing or wrong API key;
- 404 / 405: unknown path or method;
- 503 ``ServiceUnavailableError``: the waiting queue is full (with ``Retry-After``), or the
  engine is gone;
- 500 ``InternalServerError``: a bug; the message says what was raised.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmserve.engine.async_engine import EngineDeadError, QueueFullError

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """Raise from a route to answer with OpenAI's error body."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.headers = headers


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; its requests were aborted."""


def error_body(message: str, status: int, param: Optional[str] = None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(message: str, status: int = 400, param: Optional[str] = None,
                   headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)


def sse_error(message: str, status: int) -> str:
    """An error inside an already started event stream (its status is already 200)."""
    return f"data: {json.dumps(error_body(message, status))}\n\n"


#: Tags pydantic puts in an error's location for the member of a union it tried.
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "TokenizeCompletionRequest",
               "TokenizeChatRequest"}


def _loc_name(loc: tuple) -> Optional[str]:
    parts = [str(p) for p in loc if p != "body"]
    parts = [p for p in parts if "[" not in p and not p.startswith(("constrained-", "function-"))
             and p not in _UNION_TAGS]
    return ".".join(parts) or None


def _most_telling(errors: list[dict]) -> list[dict]:
    """For a union field pydantic reports one error per member; a member's "wrong type"
    says less than another member's range or format error, so keep the latter when there
    is one."""
    groups: dict[str, list[dict]] = {}
    for e in errors:
        top = next((str(p) for p in e.get("loc", ()) if p != "body"), "")
        groups.setdefault(top, []).append(e)
    kept = []
    for group in groups.values():
        specific = [e for e in group if not str(e.get("type", "")).endswith("_type")]
        kept.extend(specific or group)
    return kept


def describe_validation_errors(errors: list[dict]) -> tuple[str, Optional[str]]:
    """A readable message and the first offending field for pydantic / FastAPI errors."""
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "")
        return f"Invalid JSON body: {reason}".rstrip(": "), None
    whole_body = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
    if whole_body:
        if whole_body[0].get("type") == "missing":
            return "the request body is empty: send a JSON object", None
        return ("the request body must be a JSON object (with Content-Type: "
                "application/json)"), None
    lines = []
    param = None
    seen = set()
    for e in _most_telling(errors):
        name = _loc_name(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid value")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field (not part of this API)"
        if e.get("type") == "missing":
            msg = "field required"
        key = (name, msg)
        if key in seen:
            continue
        seen.add(key)
        if param is None:
            param = name
        got = e.get("input")
        shown = "" if e.get("type") in ("missing", "extra_forbidden") \
            or isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"{name or 'body'}: {msg}{shown}")
    return "; ".join(lines[:5]) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.message, exc.status, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError):
        message, param = describe_validation_errors(list(exc.errors()))
        return error_response(message, 400, param)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError):
        message, param = describe_validation_errors(exc.errors())
        return error_response(message, 400, param)

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError):
        return error_response(str(exc), 503, headers={"Retry-After": "1"})

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(request: Request, exc: EngineDeadError):
        return error_response(str(exc), 503)

    @app.exception_handler(ClientDisconnected)
    async def _disconnected(request: Request, exc: ClientDisconnected):
        return Response(status_code=499)  # nobody is listening; nginx's "client closed"

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(message, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)
