"""Ray Serve's own HTTP errors in OpenAI's error shape.

Ray Serve's proxy answers some requests itself, in plain text: 503 when no replica is up, 408
past `x-request-timeout-seconds`, 499 when the client left; and when the replica running a
request died, the proxy returns without answering and uvicorn sends a plain "Internal Server
Error" 500. A client of an OpenAI API expects `{"error": {...}}` whatever went wrong, so the
proxies run `RayErrorsAsOpenAI`: Ray Serve loads it in every proxy from the import path in
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH (server/scale_out.py sets it for the Serve
controller, whose proxies inherit it).

A response from an omnilive replica is never touched: it already has OpenAI's shape and
carries `x-omnilive-replica`; the proxy's own do not. A stream that was cut off after it
started (its replica died mid-reply) cannot be given a new status; it ends unfinished.
"""

from __future__ import annotations

import json
import logging

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CALLBACK_IMPORT_PATH = "omnilive.server.ray_errors.proxy_middlewares"

# kept light: every proxy imports this module, so it imports no app, engine or torch
REPLICA_HEADER = b"x-omnilive-replica"  # what server/app.py's ReplicaHeaderMiddleware sends
_TYPES = {500: "server_error", 503: "server_error", 429: "rate_limit_error"}  # as server/errors.py
_FALLBACK_MESSAGES = {
    500: "The replica serving this request failed (Ray Serve); retry the request.",
    503: "No replica is available to serve this request yet (Ray Serve); retry shortly.",
}


def proxy_middlewares() -> list[Middleware]:
    """What Ray Serve's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(RayErrorsAsOpenAI)]


class RayErrorsAsOpenAI:
    """Pure ASGI: an error response that no replica wrote becomes an OpenAI error body, with
    Ray's message (and its other headers, such as Retry-After) kept."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # Ray's error start, until its body is read
        body = b""
        started = False

        async def rewrite(message: Message) -> None:
            nonlocal held, body, started
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                if message["status"] >= 400 and REPLICA_HEADER not in names:
                    held = message
                    return
                started = True
            elif held is not None and message["type"] == "http.response.body":
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    started = True
                    await _send_error(send, held, body)
                    held = None
                return
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            if started:
                raise
            log.warning("Ray Serve's proxy failed a request before answering it", exc_info=True)
        if not started:  # it gave up on the call without a word (its replica died): uvicorn would say
            await _send_error(send, held or {"status": 500, "headers": []}, body)  # "Internal Server Error"


async def _send_error(send: Send, start: Message, ray_body: bytes) -> None:
    status = start["status"]
    message = ray_body.decode("utf-8", errors="replace").strip() or _FALLBACK_MESSAGES.get(
        status, f"Ray Serve answered {status}.")
    error = {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": None,
             "code": f"ray_serve_{status}"}
    payload = json.dumps({"error": error}).encode()
    kept = [(name, value) for name, value in start.get("headers", [])
            if name.lower() not in (b"content-type", b"content-length")]
    headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
