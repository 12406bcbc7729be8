"""Every failure leaves the server in OpenAI's error shape, so clients' error handling just works:

    HTTP 4xx/5xx  {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

OpenAI answers 400 (not FastAPI's 422) for a body that does not validate, and names the field.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnilive.types import EngineError
from omnilive.media.errors import MediaError

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {500: "server_error", 503: "server_error", 429: "rate_limit_error"}


class APIError(Exception):
    """Raised anywhere in a route; becomes `status` with the error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    error_type = _TYPE_BY_STATUS.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def model_not_found(model: str) -> APIError:
    message = f"The model '{model}' does not exist or you do not have access to it."
    return APIError(404, message, "model", "model_not_found")


_UNION_MEMBER_NAMES = frozenset({"str", "int", "float", "bool", "bytes", "none", "dict", "list"})


def param_path(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "content") → "messages[0].content" (the spelling media errors use too).

    Pydantic also puts in the union member it tried: builtin type names ("str",
    "list[...]", "function-after[...]") and, for tagged unions, the tag, which in our content
    parts repeats the field name that follows ("image_url", "image_url"). Neither is a field a
    client wrote, so both are left out.
    """
    items = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    path = ""
    for i, item in enumerate(items):
        following = items[i + 1] if i + 1 < len(items) else None
        if isinstance(item, int):
            path += f"[{item}]"
        elif item in _UNION_MEMBER_NAMES or "[" in item or item[:1].isupper() or item == following:
            continue
        else:
            path += f".{item}" if path else item
    return path or None


def _validation_message(errors: list[dict]) -> tuple[str, str | None, str | None]:
    """Pydantic's errors → one (message, param, code), about the field the client most likely meant.

    When a union fails, pydantic reports one error per member; the deepest names the field that
    was actually wrong (a bad part inside a list beats "not a string"); ties are joined.
    """
    first = errors[0]
    if first.get("type") == "json_invalid":
        return (
            "We could not parse the JSON body of your request. The body must be valid JSON "
            f"({first.get('ctx', {}).get('error', 'syntax error')}).",
            None,
            "invalid_json",
        )
    depth = lambda e: len(e.get("loc", ()))  # noqa: E731
    deepest = [e for e in errors if depth(e) == max(map(depth, errors))]
    param = param_path(tuple(deepest[0].get("loc", ())))
    if param is None:
        return ("The request body must be a JSON object (and sent with Content-Type: application/json).",
                None, "invalid_request_body")
    if all(e.get("type") == "extra_forbidden" for e in deepest):
        return f"Unrecognized request argument supplied: {param}", param, "unrecognized_argument"
    if all(e.get("type") == "missing" for e in deepest):
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    reasons = dict.fromkeys(e.get("msg", "invalid value").removeprefix("Value error, ") for e in deepest)
    return f"Invalid value for '{param}': {'; or '.join(reasons)}.", param, "invalid_value"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message, param, code = _validation_message(errors) if errors else ("Invalid request.", None, None)
        return error_response(400, message, param, code)

    @app.exception_handler(MediaError)
    async def _media_error(_: Request, exc: MediaError) -> JSONResponse:
        return error_response(exc.http_status, exc.message, exc.param, exc.code)

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return error_response(400, exc.message, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message, code = f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url"
        elif exc.status_code == 405:
            message, code = f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return JSONResponse(error_body(exc.status_code, message, None, code), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "The server had an error while processing your request.", None, "internal_error")
