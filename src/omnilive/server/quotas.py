"""Per-user quotas: requests and tokens per minute, concurrent generations, upload bytes per day.

    OMNILIVE_QUOTA_REQUESTS_PER_MINUTE=60 omnilive serve      # the default for every user
    omnilive users set alice --requests-per-minute 600         # one user's override (0 = no limit)

Over a limit the request gets 429 in OpenAI's error shape with `Retry-After` (seconds), as
OpenAI's own rate limits do, so the official clients back off and retry by themselves.

Windows slide (a request counts for exactly 60 s, an upload for 24 h) and live in this process's
memory: a restart forgets them. Tokens are counted when a reply finishes (prompt + completion),
so a request is admitted while the user's last minute is under the limit and may end above it.
A "stream" is a running generation: a chat completion, speech, a transcription, or a realtime
session for as long as it is connected.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, fields, replace

from starlette.types import ASGIApp, Receive, Scope, Send

from omnilive.server.auth import PRINCIPAL_SCOPE_KEY, Principal
from omnilive.server.errors import error_response
from omnilive.server.metrics import Metrics

GENERATION_ROUTES = frozenset({
    ("POST", "/v1/chat/completions"), ("POST", "/v1/audio/speech"), ("POST", "/v1/audio/transcriptions"),
})
REALTIME_PATH = "/v1/realtime"


@dataclass(frozen=True)
class Quotas:
    """0 = no limit."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    concurrent_streams: int = 0
    upload_bytes_per_day: int = 0

    def overridden(self, overrides: dict) -> Quotas:
        return replace(self, **{k: int(v) for k, v in overrides.items() if k in QUOTA_NAMES and v is not None})


QUOTA_NAMES = tuple(f.name for f in fields(Quotas))


class QuotaExceeded(Exception):
    def __init__(self, message: str, retry_after: float, code: str):
        super().__init__(message)
        self.message, self.code = message, code
        self.retry_after = max(1, math.ceil(retry_after))


class Window:
    """Amounts added over the last `seconds`, summed."""

    def __init__(self, seconds: float):
        self.seconds, self.events, self.total = seconds, deque(), 0

    def used(self, now: float) -> int:
        while self.events and self.events[0][0] <= now - self.seconds:
            self.total -= self.events.popleft()[1]
        return self.total

    def add(self, now: float, amount: int) -> None:
        self.used(now)
        self.events.append((now, amount))
        self.total += amount

    def wait(self, now: float, limit: int, needed: int) -> float:
        """Seconds until `needed` more fits under `limit` (as the oldest amounts leave the window)."""
        over, wait = self.used(now) + needed - limit, 0.0
        for moment, amount in self.events:
            if over <= 0:
                break
            over -= amount
            wait = moment + self.seconds - now
        return max(self.seconds if over > 0 else wait, 1.0)


@dataclass
class Usage:
    """One user's windows, running streams and totals since the server started."""

    name: str
    requests: Window
    tokens: Window
    uploads: Window
    streams: int = 0
    total_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upload_bytes: int = 0

    def summary(self) -> dict:
        return {"requests": self.total_requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "upload_bytes": self.upload_bytes,
                "running_streams": self.streams}


class QuotaBook:
    def __init__(self, defaults: Quotas):
        self.defaults = defaults
        self._usage: dict[str, Usage] = {}  # by owner (user id)

    def quotas_of(self, principal: Principal) -> Quotas:
        return self.defaults.overridden(principal.quota_overrides)

    def usage(self, owner: str) -> Usage | None:
        return self._usage.get(owner)

    def _of(self, principal: Principal) -> Usage:
        usage = self._usage.get(principal.owner)
        if usage is None:
            usage = self._usage[principal.owner] = Usage(principal.name, Window(60), Window(60), Window(86_400))
        return usage

    def admit(self, principal: Principal, generation: bool) -> None:
        """Count one request, or raise QuotaExceeded (then it does not count)."""
        quotas, usage, now = self.quotas_of(principal), self._of(principal), time.monotonic()
        if quotas.requests_per_minute and usage.requests.used(now) >= quotas.requests_per_minute:
            raise QuotaExceeded(f"Rate limit reached for user {principal.name}: {quotas.requests_per_minute} "
                                "requests per minute.", usage.requests.wait(now, quotas.requests_per_minute, 1),
                                "rate_limit_exceeded")
        if generation and quotas.tokens_per_minute and usage.tokens.used(now) >= quotas.tokens_per_minute:
            raise QuotaExceeded(f"Rate limit reached for user {principal.name}: {quotas.tokens_per_minute} "
                                "tokens per minute.", usage.tokens.wait(now, quotas.tokens_per_minute, 1),
                                "tokens_rate_limit_exceeded")
        if generation and quotas.concurrent_streams and usage.streams >= quotas.concurrent_streams:
            raise QuotaExceeded(f"Too many concurrent requests for user {principal.name}: the limit is "
                                f"{quotas.concurrent_streams} at once.", 1, "concurrent_requests_exceeded")
        usage.requests.add(now, 1)
        usage.total_requests += 1
        if generation:
            usage.streams += 1

    def stream_ended(self, principal: Principal) -> None:
        self._of(principal).streams -= 1

    def record_tokens(self, principal: Principal, prompt: int, completion: int) -> None:
        usage = self._of(principal)
        usage.tokens.add(time.monotonic(), prompt + completion)
        usage.prompt_tokens += prompt
        usage.completion_tokens += completion

    def admit_upload(self, principal: Principal, size: int) -> None:
        """Count an upload of `size` bytes, or raise QuotaExceeded."""
        quotas, usage, now = self.quotas_of(principal), self._of(principal), time.monotonic()
        limit = quotas.upload_bytes_per_day
        if limit and usage.uploads.used(now) + size > limit:
            wait = usage.uploads.wait(now, limit, size) if size <= limit else 86_400
            raise QuotaExceeded(f"Upload quota reached for user {principal.name}: {limit} bytes per day "
                                f"({usage.uploads.used(now)} used; this upload is {size}).", wait,
                                "upload_quota_exceeded")
        usage.uploads.add(now, size)
        usage.upload_bytes += size


def quota_response(error: QuotaExceeded):
    response = error_response(429, error.message, None, error.code)
    response.headers["Retry-After"] = str(error.retry_after)
    return response


class QuotaMiddleware:
    """Admits each authenticated request against its user's quotas; holds a stream slot while a
    generation runs (to its last streamed byte, or for a realtime session's whole life)."""

    def __init__(self, app: ASGIApp, book: QuotaBook, metrics: Metrics):
        self.app, self.book, self.metrics = app, book, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
        if principal is None:
            await self.app(scope, receive, send)
            return
        generation = (scope["path"] == REALTIME_PATH if scope["type"] == "websocket"
                      else (scope.get("method"), scope["path"]) in GENERATION_ROUTES)
        try:
            self.book.admit(principal, generation)
        except QuotaExceeded as error:
            self.metrics.rate_limited.labels(principal.name, error.code).inc()
            await _refuse(scope, receive, send, error)
            return
        self.metrics.user_requests.labels(principal.name).inc()
        try:
            await self.app(scope, receive, send)
        finally:
            if generation:
                self.book.stream_ended(principal)


async def _refuse(scope: Scope, receive: Receive, send: Send, error: QuotaExceeded) -> None:
    if scope["type"] == "http":
        await quota_response(error)(scope, receive, send)
    elif "websocket.http.response" in scope.get("extensions", {}):  # a real 429 to the handshake
        response = quota_response(error)
        await send({"type": "websocket.http.response.start", "status": 429, "headers": response.raw_headers})
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.code})
