"""Per-connection event rate limit for WebSockets (the Realtime API), by backpressure.

A client may send `rate` events per second on average, and `burst` at once; past that, the
server simply reads its next event later. Nothing is dropped or refused (a fast sender is
slowed, as TCP slows it), so a client streaming recorded audio faster than real time still
works, while a flood of tiny events cannot make the server do more than `rate` events' work
per second per connection. Each event's size is bounded separately: by uvicorn (16 MiB) and the
session's `max_event_bytes`.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class TokenBucket:
    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, time.monotonic()

    def wait_for_one(self) -> float:
        """Take one token; returns how long to wait first (0 when one was there)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class WebSocketRateLimitMiddleware:
    def __init__(self, app: ASGIApp, events_per_second: float):
        self.app, self.rate = app, events_per_second

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        bucket = TokenBucket(self.rate, burst=2 * self.rate)

        async def paced_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                delay = bucket.wait_for_one()
                if delay > 0:
                    await asyncio.sleep(delay)
            return message

        await self.app(scope, paced_receive, send)
