"""Bearer-token auth for the API, on when the operator sets an api_key.

Only paths under /v1 are guarded: /health (load balancers), /metrics (Prometheus) and the
web app's static files stay open. A browser WebSocket cannot set headers, so /v1 WebSockets
may also pass the key as OpenAI's `openai-insecure-api-key.<key>` subprotocol.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from omnilive.server.errors import error_response

_GUARDED_PREFIX = "/v1/"
_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


def presented_key(scope: Scope) -> str | None:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scope["type"] == "websocket":
        for protocol in headers.get("sec-websocket-protocol", "").split(","):
            if protocol.strip().startswith(_SUBPROTOCOL_PREFIX):
                return protocol.strip().removeprefix(_SUBPROTOCOL_PREFIX)
    return None


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.api_key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] in ("http", "websocket") and scope["path"].startswith(_GUARDED_PREFIX)
        # CORS preflights carry no credentials by design; the CORS layer above answers them
        if not guarded or scope.get("method") == "OPTIONS" or self._accepts(presented_key(scope)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid api key"})
            return
        key = presented_key(scope)
        message = (
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            if key is None
            else "Incorrect API key provided."
        )
        await error_response(401, message, None, "invalid_api_key")(scope, receive, send)

    def _accepts(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key.encode(), self.api_key)
