"""The web app's conversation history, kept on the server (guarded by the API key like all of /v1).

    GET    /v1/history/conversations            list, most recently updated first
    POST   /v1/history/conversations            create {title?, settings?}
    GET    /v1/history/conversations/{id}       one, with its messages
    PATCH  /v1/history/conversations/{id}       rename / change settings
    DELETE /v1/history/conversations/{id}       delete, with its messages (and media no one else uses)
    POST   /v1/history/conversations/{id}/messages   append one message (committed on return)
    POST   /v1/history/media                    upload a file (multipart "file"); id = sha256
    GET    /v1/history/media/{id}               its bytes

Not under /v1/conversations: OpenAI uses that path for its Responses API's conversations,
whose shape differs. Handlers are plain functions, run in FastAPI's thread pool: the store
blocks on SQL and disk.

Everything here belongs to the caller: another user's conversation or media id is a 404, the
same as an id that never existed (admins included: they manage users, not their chats).
Every integer has bounds, so none reaches the database past its 64 bits (issue 18: an offset of
7468668545912323178496 was a 500).
"""

from __future__ import annotations

import mimetypes
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from omnilive.server.auth import principal_of
from omnilive.server.errors import APIError
from omnilive.server.store import Conversation, HistoryStore, MediaInfo, MediaTooLarge, Message

router = APIRouter(prefix="/v1/history", tags=["history"])

MAX_OFFSET = 1_000_000_000  # far past any real history, far below SQLite's and PostgreSQL's 2**63


# -- API models ---------------------------------------------------------------------------------


class MediaOut(BaseModel):
    id: str = Field(description="sha256 of the bytes")
    object: Literal["history.media"] = "history.media"
    kind: Literal["image", "audio", "video", "file"]
    mime_type: str
    bytes: int
    filename: str
    created_at: int


class MessageOut(BaseModel):
    id: int
    object: Literal["history.message"] = "history.message"
    conversation_id: str
    role: str
    content: str
    reasoning: str | None
    media: list[MediaOut]
    created_at: int


class ConversationOut(BaseModel):
    id: str
    object: Literal["history.conversation"] = "history.conversation"
    title: str
    settings: dict
    created_at: int
    updated_at: int
    messages: list[MessageOut] | None = Field(None, description="only when one conversation is fetched")


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationOut]
    total: int


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field("", max_length=200, description='"" = taken from the first user message')
    settings: dict = Field(default_factory=dict)


class ConversationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, max_length=200)
    settings: dict | None = None


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system"]
    content: str = Field("", max_length=1_000_000)
    reasoning: str | None = Field(None, max_length=1_000_000)
    media: list[str] = Field(default_factory=list, max_length=32, description="ids from POST /v1/history/media")


class Deleted(BaseModel):
    id: str
    object: Literal["history.conversation.deleted"] = "history.conversation.deleted"
    deleted: bool


# -- routes --------------------------------------------------------------------------------------


@router.get("/conversations")
def list_conversations(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ConversationList:
    store, owner = _store(request), _owner(request)
    data = [conversation_out(c) for c in store.list_conversations(owner=owner, limit=limit, offset=offset)]
    return ConversationList(data=data, total=store.count_conversations(owner=owner))


@router.post("/conversations", status_code=201)
def create_conversation(request: Request, body: ConversationCreate) -> ConversationOut:
    created = _store(request).create_conversation(body.title.strip(), body.settings, owner=_owner(request))
    return conversation_out(created)


@router.get("/conversations/{conversation_id}")
def get_conversation(request: Request, conversation_id: str) -> ConversationOut:
    found = _store(request).get_conversation(conversation_id, owner=_owner(request))
    return conversation_out(_existing(found, conversation_id))


@router.patch("/conversations/{conversation_id}")
def update_conversation(request: Request, conversation_id: str, body: ConversationPatch) -> ConversationOut:
    title = body.title.strip() if body.title is not None else None
    updated = _store(request).update_conversation(conversation_id, title, body.settings, owner=_owner(request))
    return conversation_out(_existing(updated, conversation_id))


@router.delete("/conversations/{conversation_id}")
def delete_conversation(request: Request, conversation_id: str) -> Deleted:
    if not _store(request).delete_conversation(conversation_id, owner=_owner(request)):
        raise _not_found(conversation_id)
    return Deleted(id=conversation_id, deleted=True)


@router.post("/conversations/{conversation_id}/messages", status_code=201)
def append_message(request: Request, conversation_id: str, body: MessageCreate) -> MessageOut:
    try:
        message = _store(request).append_message(conversation_id, body.role, body.content, body.reasoning, body.media,
                                                 owner=_owner(request))
    except KeyError as e:
        raise APIError(400, f"No such media: {e.args[0]}. Upload it to /v1/history/media first.",
                       "media", "media_not_found") from None
    return _message_out(_existing(message, conversation_id))


@router.post("/media", status_code=201)
def upload_media(request: Request, file: Annotated[UploadFile, File()]) -> MediaOut:
    filename = file.filename or "upload"
    mime_type = file.content_type
    if not mime_type or mime_type == "application/octet-stream":
        mime_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    limit = request.app.state.settings.max_media_bytes
    too_large = APIError(413, f"The file '{filename}' is too large: the limit is {limit // (1024 * 1024)} MB "
                         f"({limit} bytes).", "file", "file_too_large")
    if file.size is not None and file.size > limit:  # refused before it counts against the upload quota
        raise too_large
    request.app.state.quotas.admit_upload(principal_of(request), file.size or 0)  # or 429
    try:
        return _media_out(_store(request).save_media(file.file, mime_type, filename, limit, owner=_owner(request)))
    except MediaTooLarge:
        raise too_large from None


@router.get("/media/{media_id}", response_class=FileResponse)
def get_media(request: Request, media_id: str) -> FileResponse:
    store = _store(request)
    media = store.get_media(media_id, owner=_owner(request))
    if media is None or not store.media_file(media_id).exists():
        raise APIError(404, f"No such media: {media_id}", "media_id", "media_not_found")
    # content-addressed: the bytes behind an id never change
    return FileResponse(store.media_file(media_id), media_type=media.mime_type,
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})


# -- helpers -------------------------------------------------------------------------------------


def _store(request: Request) -> HistoryStore:
    return request.app.state.history


def _owner(request: Request) -> str:
    return principal_of(request).owner


def _not_found(conversation_id: str) -> APIError:
    return APIError(404, f"No such conversation: {conversation_id}", "conversation_id", "conversation_not_found")


def _existing(found, conversation_id: str):
    if found is None:
        raise _not_found(conversation_id)
    return found


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def _media_out(media: MediaInfo) -> MediaOut:
    return MediaOut(id=media.id, kind=media.kind, mime_type=media.mime_type, bytes=media.bytes,
                    filename=media.filename, created_at=_seconds(media.created_at))


def _message_out(message: Message) -> MessageOut:
    return MessageOut(id=message.id, conversation_id=message.conversation_id, role=message.role,
                      content=message.content, reasoning=message.reasoning,
                      media=[_media_out(m) for m in message.media], created_at=_seconds(message.created_at))


def conversation_out(conversation: Conversation) -> ConversationOut:
    messages = None if conversation.messages is None else [_message_out(m) for m in conversation.messages]
    return ConversationOut(id=conversation.id, title=conversation.title, settings=conversation.settings,
                           created_at=_seconds(conversation.created_at), updated_at=_seconds(conversation.updated_at),
                           messages=messages)
