"""The history store: conversations and their messages in SQL, media bytes on disk.

    store = HistoryStore.open("sqlite:///data/omnilive.db", Path("data/media"))
    conv = store.create_conversation("Trip plans", {"model": "omnilive-small"}, owner=user_id)
    media = store.save_media(open("cat.png", "rb"), "image/png", "cat.png", max_bytes=25 << 20, owner=user_id)
    store.append_message(conv.id, "user", "What is this?", media_ids=[media.id], owner=user_id)

Every call names its `owner` (a user id; "" = the operator): a conversation or media of another
owner is not found, exactly as one that does not exist, so ids leak nothing between users.

Crash safety: every call is one transaction, committed before it returns, so a message the
client was told about survives a SIGKILL right after. SQLite runs in WAL mode with
synchronous=FULL (durable across power loss too) and with foreign keys on (for the cascades).
Media files are written to a temporary name, fsynced and renamed before their row commits.
Methods are blocking: call them from FastAPI's thread pool (plain `def` routes).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from omnilive.server.store.database import connect
from omnilive.server.store.models import (
    ConversationRow,
    MediaOwnerRow,
    MediaRow,
    MessageMediaRow,
    MessageRow,
    utc_now,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")  # also keeps media ids from naming paths outside root
TITLE_FROM_MESSAGE_CHARS = 60


class MediaTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"media over {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class MediaInfo:
    id: str  # sha256 of the bytes
    kind: str
    mime_type: str
    bytes: int
    filename: str
    created_at: datetime


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: str
    role: str
    content: str
    reasoning: str | None
    media: tuple[MediaInfo, ...]
    created_at: datetime


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    settings: dict
    created_at: datetime
    updated_at: datetime
    messages: tuple[Message, ...] | None = None  # None when listed without messages


def media_kind(mime_type: str) -> str:
    major = mime_type.split("/", 1)[0]
    return major if major in ("image", "audio", "video") else "file"


class HistoryStore:
    def __init__(self, engine: Engine, media_dir: Path):
        self.engine = engine
        self.media_dir = media_dir
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, database_url: str, media_dir: Path) -> HistoryStore:
        """Connect, create the tables that are missing, and make the media folder."""
        media_dir.mkdir(parents=True, exist_ok=True)
        return cls(connect(database_url), media_dir)

    def close(self) -> None:
        self.engine.dispose()

    # -- conversations -------------------------------------------------------------------------

    def list_conversations(self, *, owner: str, limit: int = 100, offset: int = 0) -> list[Conversation]:
        """Most recently updated first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ConversationRow).where(ConversationRow.owner == owner)
                .order_by(ConversationRow.updated_at.desc(), ConversationRow.id)
                .limit(limit).offset(offset)
            )
            return [_conversation(row) for row in rows]

    def count_conversations(self, *, owner: str) -> int:
        with self._sessions() as session:
            query = select(func.count()).select_from(ConversationRow).where(ConversationRow.owner == owner)
            return session.scalar(query) or 0

    def conversations_by_owner(self) -> dict[str, int]:
        """How many conversations each owner has (for the admins' usage listing; no content)."""
        with self._sessions() as session:
            query = select(ConversationRow.owner, func.count()).group_by(ConversationRow.owner)
            return {owner: count for owner, count in session.execute(query)}

    def create_conversation(self, title: str = "", settings: dict | None = None, *, owner: str) -> Conversation:
        now = utc_now()
        row = ConversationRow(id=f"conv_{uuid.uuid4().hex}", owner=owner, title=title, settings=settings or {},
                              created_at=now, updated_at=now)
        with self._sessions.begin() as session:
            session.add(row)
        return _conversation(row, messages=())

    def get_conversation(self, conversation_id: str, *, owner: str) -> Conversation | None:
        with self._sessions() as session:
            row = session.get(
                ConversationRow, conversation_id,
                options=[selectinload(ConversationRow.messages).selectinload(MessageRow.attachments)],
            )
            if row is None or row.owner != owner:
                return None
            return _conversation(row, messages=tuple(map(_message, row.messages)))

    def update_conversation(
        self, conversation_id: str, title: str | None = None, settings: dict | None = None, *, owner: str
    ) -> Conversation | None:
        with self._sessions.begin() as session:
            row = _owned(session, conversation_id, owner)
            if row is None:
                return None
            if title is not None:
                row.title = title
            if settings is not None:
                row.settings = settings
            row.updated_at = utc_now()
            return _conversation(row)

    def delete_conversation(self, conversation_id: str, *, owner: str) -> bool:
        """Delete it with its messages, then any media no other message refers to."""
        with self._sessions.begin() as session:
            row = _owned(session, conversation_id, owner)
            if row is None:
                return False
            message_ids = select(MessageRow.id).where(MessageRow.conversation_id == conversation_id)
            used = set(session.scalars(select(MessageMediaRow.sha256).where(MessageMediaRow.message_id.in_(message_ids))))
            session.delete(row)
            session.flush()
            still_used = set(session.scalars(select(MessageMediaRow.sha256).where(MessageMediaRow.sha256.in_(used))))
            orphans = used - still_used
            if orphans:
                session.execute(delete(MediaOwnerRow).where(MediaOwnerRow.sha256.in_(orphans)))
                session.execute(delete(MediaRow).where(MediaRow.sha256.in_(orphans)))
        for sha in orphans:  # after the commit: a crash in between leaves a file, never a dangling row
            self._media_path(sha).unlink(missing_ok=True)
        return True

    # -- messages ------------------------------------------------------------------------------

    def append_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        reasoning: str | None = None,
        media_ids: Iterable[str] = (),
        *,
        owner: str,
    ) -> Message | None:
        """Add a message (committed on return); None if the owner has no such conversation.

        Raises KeyError naming a media id the owner never uploaded. An untitled conversation
        takes its title from its first user message.
        """
        media_ids = list(media_ids)
        with self._sessions.begin() as session:
            conversation = _owned(session, conversation_id, owner)
            if conversation is None:
                return None
            owned = select(MediaOwnerRow.sha256).where(MediaOwnerRow.owner == owner, MediaOwnerRow.sha256.in_(media_ids))
            known = {row.sha256: row for row in session.scalars(select(MediaRow).where(MediaRow.sha256.in_(owned)))}
            missing = [m for m in media_ids if m not in known]
            if missing:
                raise KeyError(missing[0])
            now = utc_now()
            row = MessageRow(conversation_id=conversation_id, role=role, content=content,
                             reasoning=reasoning or None, created_at=now)
            row.attachments = [MessageMediaRow(position=i, sha256=sha, media=known[sha]) for i, sha in enumerate(media_ids)]
            session.add(row)
            conversation.updated_at = now
            if not conversation.title and role == "user" and content.strip():
                conversation.title = _title_from(content)
            session.flush()
            return _message(row)

    # -- media ---------------------------------------------------------------------------------

    def save_media(self, source: BinaryIO, mime_type: str, filename: str, max_bytes: int, *, owner: str) -> MediaInfo:
        """Store bytes under their sha256 (once, however often and by whom they are sent) and make
        `owner` one of their owners; MediaTooLarge over max_bytes."""
        digest, size = hashlib.sha256(), 0
        handle, partial = tempfile.mkstemp(dir=self.media_dir, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                while block := source.read(1024 * 1024):
                    size += len(block)
                    if size > max_bytes:
                        raise MediaTooLarge(max_bytes)
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self._media_path(sha)
            final.parent.mkdir(exist_ok=True)
            os.replace(partial, final)
        finally:
            Path(partial).unlink(missing_ok=True)

        row = MediaRow(sha256=sha, kind=media_kind(mime_type), mime_type=mime_type, bytes=size,
                       filename=filename[:255], created_at=utc_now())
        for _ in range(3):  # an IntegrityError = the same bytes saved at the same moment by another request
            try:
                with self._sessions.begin() as session:
                    existing = session.get(MediaRow, sha)
                    if existing is None:
                        session.add(row)
                    if session.get(MediaOwnerRow, (sha, owner)) is None:
                        session.add(MediaOwnerRow(sha256=sha, owner=owner, created_at=row.created_at))
                    return _media(existing or row)
            except IntegrityError:
                continue
        raise RuntimeError(f"could not record media {sha}")

    def get_media(self, media_id: str, *, owner: str) -> MediaInfo | None:
        """The media if `owner` uploaded it, else None (as for an id that does not exist)."""
        if not _SHA256.match(media_id):
            return None
        with self._sessions() as session:
            if session.get(MediaOwnerRow, (media_id, owner)) is None:
                return None
            row = session.get(MediaRow, media_id)
            return _media(row) if row else None

    def media_file(self, media_id: str) -> Path:
        return self._media_path(media_id)

    def _media_path(self, sha: str) -> Path:
        if not _SHA256.match(sha):
            raise ValueError(f"not a media id: {sha!r}")
        return self.media_dir / sha[:2] / sha


def _owned(session: Session, conversation_id: str, owner: str) -> ConversationRow | None:
    row = session.get(ConversationRow, conversation_id)
    return row if row is not None and row.owner == owner else None


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= TITLE_FROM_MESSAGE_CHARS else line[: TITLE_FROM_MESSAGE_CHARS - 1].rstrip() + "…"


def _media(row: MediaRow) -> MediaInfo:
    return MediaInfo(row.sha256, row.kind, row.mime_type, row.bytes, row.filename, row.created_at)


def _message(row: MessageRow) -> Message:
    media = tuple(_media(a.media) for a in row.attachments)
    return Message(row.id, row.conversation_id, row.role, row.content, row.reasoning, media, row.created_at)


def _conversation(row: ConversationRow, messages: tuple[Message, ...] | None = None) -> Conversation:
    return Conversation(row.id, row.title, dict(row.settings or {}), row.created_at, row.updated_at, messages)
