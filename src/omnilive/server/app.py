"""The FastAPI app factory: settings + an engine → the OpenAI-compatible HTTP server.

    app = create_app(Settings(), engine)      # engine=None loads the one settings.model names

Request path through the middleware, outermost first:
    metrics (time + count everything) → drain (503 after SIGTERM) → CORS → auth (/v1: who is
    calling) → quotas (per user) → body size limit / WebSocket event rate → routes
The engine starts in the lifespan, so uvicorn accepts connections only once it is ready.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnilive.types import Backend
from omnilive.server.auth import Authenticator, AuthMiddleware, ClientSecrets
from omnilive.server.drain import Drain, DrainMiddleware
from omnilive.server.errors import error_response, install_error_handlers
from omnilive.server.files import FileStore
from omnilive.server.metrics import Metrics, MetricsMiddleware
from omnilive.server.quotas import QuotaBook, QuotaExceeded, QuotaMiddleware, Quotas, quota_response
from omnilive.server.routes import (
    audio, chat, client_secrets, conversations, files, health, models, realtime, users,
)
from omnilive.server.settings import Settings
from omnilive.server.store import AccountStore, HistoryStore
from omnilive.server.ws_limits import WebSocketRateLimitMiddleware

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-omnilive-replica"
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def package_version() -> str:
    try:
        return metadata.version("omnilive")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def create_app(settings: Settings, engine: Backend | None = None, replica: str | None = None) -> FastAPI:
    """`replica` (a Ray Serve replica's name, server/scale_out.py) is sent back as the
    `x-omnilive-replica` header of every response and a field of every realtime event."""
    if engine is None:
        from omnilive.backends import load_backend

        engine = load_backend(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        app.state.history = HistoryStore.open(settings.resolved_database_url, settings.data_dir / "media")
        app.state.accounts = authenticator.accounts = AccountStore(app.state.history.engine)
        _say_who_may_connect(settings, app.state.accounts)
        await engine.start()
        log.info("engine ready: %s", engine.card.id)
        try:
            yield
        finally:
            await engine.stop()
            app.state.history.close()

    app = FastAPI(title="omnilive", version=package_version(), lifespan=lifespan)
    app.state.settings = settings
    app.state.replica = replica
    app.state.engine = engine
    app.state.metrics = metrics = Metrics(replica)
    app.state.files = FileStore(settings.files_dir)
    app.state.media_limits = settings.media_limits()
    app.state.created = int(time.time())
    app.state.drain = Drain()
    app.state.client_secrets = ClientSecrets()
    app.state.auth = authenticator = Authenticator(
        settings.api_key.get_secret_value() if settings.api_key is not None else None,
        settings.auth_cache_seconds, app.state.client_secrets,
    )
    app.state.quotas = quota_book = QuotaBook(Quotas(
        settings.quota_requests_per_minute, settings.quota_tokens_per_minute,
        settings.quota_concurrent_streams, settings.quota_upload_bytes_per_day,
    ))
    metrics.prompt_tokens.on_inc = lambda principal, n: quota_book.record_tokens(principal, int(n), 0)
    metrics.completion_tokens.on_inc = lambda principal, n: quota_book.record_tokens(principal, 0, int(n))
    install_error_handlers(app)

    @app.exception_handler(QuotaExceeded)
    async def _quota_exceeded(_, error: QuotaExceeded):
        return quota_response(error)

    for module in (health, models, chat, audio, files, conversations, users, client_secrets):
        app.include_router(module.router)
    app.include_router(users.admin)
    app.include_router(realtime.router)  # WebSocket /v1/realtime
    if (WEB_DIR / "index.html").exists():  # the web app, when it is installed
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")

    # add_middleware wraps what is already there: the last added runs first
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(WebSocketRateLimitMiddleware, events_per_second=settings.realtime_max_events_per_second)
    app.add_middleware(QuotaMiddleware, book=quota_book, metrics=metrics)
    app.add_middleware(AuthMiddleware, authenticator=authenticator)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if replica is not None:
        app.add_middleware(ReplicaHeaderMiddleware, replica=replica)
    return app


def _say_who_may_connect(settings: Settings, accounts: AccountStore) -> None:
    """An open server says so: with no users and no --api-key, whoever reaches it may use it all."""
    if settings.api_key is not None or accounts.has_users():
        return
    where = f"{settings.host}:{settings.port}"
    loopback = settings.host in ("127.0.0.1", "::1", "localhost")
    log.warning(
        "No users and no API key: every /v1 route is open to %s. Add a user with `omnilive users add NAME "
        "--admin` (or pass --api-key) to require keys.",
        f"programs on this machine ({where})" if loopback else f"ANYONE WHO CAN REACH {where}",
    )


class ReplicaHeaderMiddleware:
    """`x-omnilive-replica: <name>` on every HTTP response and WebSocket handshake."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def named_send(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named_send if scope["type"] in ("http", "websocket") else send)


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`, decided before the body is read.

    A declared Content-Length over the limit is refused without reading a byte. A chunked body
    is counted as it arrives; at the limit, reading stops and whatever the app was going to
    answer (FastAPI turns a failed body read into its own 400) is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return

        received, exceeded, answered = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not exceeded:
                answered = True
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if exceeded and not answered:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"Request body is too large: the limit is {self.max_bytes} bytes."
        await error_response(413, message, None, "request_too_large")(scope, receive, send)


class BodyTooLarge(Exception):
    pass
