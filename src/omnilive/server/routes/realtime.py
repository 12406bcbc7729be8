"""WebSocket /v1/realtime: the OpenAI Realtime API over the app's engine.

    ws://host/v1/realtime?model=omnilive-small     GA events (the openai client's `realtime.connect`)
    + header `OpenAI-Beta: realtime=v1`, `?beta`,  beta event names (`beta.realtime.connect`)
      or subprotocol `openai-beta.realtime-v1`

The API key (checked by the auth middleware) comes as a Bearer header or, from a browser, as
the `openai-insecure-api-key.<key>` subprotocol. One task reads events and hands them to the
session in order; one task writes the session's events, so a slow client never blocks the VAD.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from omnilive.server.realtime.events import Dialect, RealtimeError, error_event
from omnilive.server.realtime.session import RealtimeSession
from omnilive.server.routes.models import served_names

log = logging.getLogger(__name__)
router = APIRouter()

WEBSOCKET_MAX_MESSAGE_BYTES = 15 * 1024 * 1024  # under uvicorn's 16 MiB, so we answer, not it
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
REPLICA_FIELD = "x-omnilive-replica"


def wants_beta(websocket: WebSocket) -> bool:
    header = websocket.headers.get("openai-beta", "")
    flag = websocket.query_params.get("beta")
    return ("realtime=v1" in header or (flag is not None and flag.lower() not in ("0", "false", "no"))
            or BETA_SUBPROTOCOL in websocket.scope.get("subprotocols", []))


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    state = websocket.app.state
    offered = websocket.scope.get("subprotocols", [])
    # a browser insists the server picks one of its subprotocols; OpenAI's is "realtime"
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else (offered[0] if offered else None))
    model = websocket.query_params.get("model")
    if model is not None and model not in served_names(websocket):
        error = RealtimeError(f"The model '{model}' does not exist.", "model_not_found", "model")
        await websocket.send_json(error_event(error, None))
        await websocket.close(1008)
        return

    outbox: asyncio.Queue[dict] = asyncio.Queue()
    session = RealtimeSession(
        state.engine, state.metrics, state.media_limits, Dialect(beta=wants_beta(websocket)), outbox.put_nowait,
        max_event_bytes=min(state.settings.max_body_bytes, WEBSOCKET_MAX_MESSAGE_BYTES),
    )
    writer = asyncio.create_task(_write(websocket, outbox, state.replica))
    session.open()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            await session.handle(raw if raw is not None else message.get("bytes") or b"")
    except WebSocketDisconnect:
        pass
    finally:
        await session.close()  # nothing of this session keeps running once the client is gone
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer


async def _write(websocket: WebSocket, outbox: asyncio.Queue[dict], replica: str | None) -> None:
    """Sends the session's events in order; under Ray Serve each names the replica it came from
    (`x-omnilive-replica`, as the HTTP header), so a client can see its session stays put."""
    try:
        while True:
            event = outbox.get_nowait() if not outbox.empty() else await outbox.get()
            await websocket.send_json(event if replica is None else {**event, REPLICA_FIELD: replica})
    except (WebSocketDisconnect, RuntimeError):  # the client went away; the reader sees it too
        pass
