"""POST /v1/realtime/client_secrets: a short-lived `ek_…` secret for a browser's realtime session.

A page should not hold a long-lived key. Its server (or a signed-in user) asks for a client
secret and hands it to the page, which opens the WebSocket with the subprotocol
`openai-insecure-api-key.<secret>`, as OpenAI's browser clients do. The secret opens realtime
sessions as the user who asked for it, only until it expires (10 s to 2 h; default 10 min),
and is refused everywhere else. The `session` given is accepted and not applied: the page
configures its session with session.update, as with a key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from omnilive.server.auth import Principal, principal_of
from omnilive.server.realtime.config import SessionConfig, session_wire
from omnilive.server.realtime.events import Dialect, new_id

router = APIRouter(tags=["realtime"])


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(600, ge=10, le=7200)


class ClientSecretCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_after: ExpiresAfter | None = None
    session: dict | None = None


class ClientSecret(BaseModel):
    value: str
    expires_at: int
    session: dict


@router.post("/v1/realtime/client_secrets")
async def create_client_secret(
    request: Request, principal: Annotated[Principal, Depends(principal_of)], body: ClientSecretCreate | None = None
) -> ClientSecret:
    seconds = body.expires_after.seconds if body is not None and body.expires_after is not None else 600
    value, expires_at = request.app.state.client_secrets.create(principal, seconds)
    card = request.app.state.engine.card
    session = session_wire(SessionConfig(voice=card.default_voice), new_id("sess"), card, Dialect(beta=False))
    return ClientSecret(value=value, expires_at=expires_at, session=session)
