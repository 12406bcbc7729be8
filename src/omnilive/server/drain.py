"""SIGTERM drains the server: what is running finishes, what arrives is told to go elsewhere.

    SIGTERM ─▶ draining: new HTTP requests (and /health) get 503 + Retry-After, new WebSockets are
               refused; requests in flight, streams included, run on
            ─▶ when none is left, or after `drain_seconds`, uvicorn's own shutdown: the listener
               closes, whatever still runs gets a few seconds more, then the engine stops
    a second SIGTERM, or Ctrl-C: stop now

A load balancer sees /health turn 503 and sends traffic to other replicas, while the streams
this one started reach their end instead of being cut off mid-sentence.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from omnilive.server.errors import error_response

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
SHUTDOWN_GRACE_S = 5  # after draining, what still runs gets this long before uvicorn cancels it


class Drain:
    """Whether the server is draining, and how many requests are still in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.since: float | None = None  # monotonic time the drain began

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()


class DrainMiddleware:
    """Counts requests in flight; while draining, refuses new ones (503, or a closed WebSocket)."""

    def __init__(self, app: ASGIApp, drain: Drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1012, "reason": "server restarting"})
                return
            response = error_response(503, "The server is shutting down; retry on another server or shortly.",
                                      None, "server_draining")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM meaning "drain, then stop" rather than "stop"."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_seconds: float):
        super().__init__(config)
        self.drain, self.drain_seconds = drain, drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.drain.draining and self.drain_seconds > 0:
            self.drain.begin()  # on_tick ends it
            log.info("SIGTERM: draining %d request(s) in flight for up to %.0f s; new ones get 503",
                     self.drain.in_flight, self.drain_seconds)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and not self.should_exit:
            waited = time.monotonic() - self.drain.since
            if self.drain.in_flight == 0 or waited >= self.drain_seconds:
                log.info("drained (%d left after %.1f s): stopping", self.drain.in_flight, waited)
                self.should_exit = True
        return await super().on_tick(counter)


def run_server(app, host: str, port: int, log_level: str, drain_seconds: float) -> None:
    """Serve `app` (made by create_app, whose state holds the Drain) until SIGTERM has drained it."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    DrainingServer(config, app.state.drain, drain_seconds).run()
