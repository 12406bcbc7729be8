"""The FastAPI app factory: settings + an engine → the OpenAI-compatible HTTP server.

    app = create_app(Settings(), engine)      # engine=None loads the one settings.model names

Request path through the middleware, outermost first:
    metrics (time + count everything) → CORS → API key (/v1 only) → body size limit → routes
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
from omnilive.server.auth import APIKeyMiddleware
from omnilive.server.errors import error_response, install_error_handlers
from omnilive.server.files import FileStore
from omnilive.server.metrics import Metrics, MetricsMiddleware
from omnilive.server.routes import audio, chat, conversations, files, health, models, realtime
from omnilive.server.settings import Settings
from omnilive.server.store import HistoryStore

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
    app.state.metrics = metrics = Metrics()
    app.state.files = FileStore(settings.files_dir)
    app.state.media_limits = settings.media_limits()
    app.state.created = int(time.time())
    install_error_handlers(app)

    for module in (health, models, chat, audio, files, conversations):
        app.include_router(module.router)
    app.include_router(realtime.router)  # WebSocket /v1/realtime
    if (WEB_DIR / "index.html").exists():  # the web app, when it is installed
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")

    # add_middleware wraps what is already there: the last added runs first
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key.get_secret_value())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if replica is not None:
        app.add_middleware(ReplicaHeaderMiddleware, replica=replica)
    return app


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
