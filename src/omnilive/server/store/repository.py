"""The history store: conversations and their messages in SQL, media bytes on disk.

    store = HistoryStore.open("sqlite:///data/omnilive.db", Path("data/media"))
    conv = store.create_conversation("Trip plans", {"model": "omnilive-small"})
    media = store.save_media(open("cat.png", "rb"), "image/png", "cat.png", max_bytes=25 << 20)
    store.append_message(conv.id, "user", "What is this?", media_ids=[media.id])

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

from sqlalchemy import create_engine, delete, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from omnilive.server.store.models import (
    Base,
    ConversationRow,
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
        if database_url.startswith("postgresql://"):  # plain URLs mean psycopg 3, not psycopg2
            database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
        if database_url.startswith("sqlite:///"):
            Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(database_url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(engine)
        media_dir.mkdir(parents=True, exist_ok=True)
        return cls(engine, media_dir)

    def close(self) -> None:
        self.engine.dispose()

    # -- conversations -------------------------------------------------------------------------

    def list_conversations(self, limit: int = 100, offset: int = 0) -> list[Conversation]:
        """Most recently updated first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ConversationRow)
                .order_by(ConversationRow.updated_at.desc(), ConversationRow.id)
                .limit(limit).offset(offset)
            )
            return [_conversation(row) for row in rows]

    def count_conversations(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(ConversationRow)) or 0

    def create_conversation(self, title: str = "", settings: dict | None = None) -> Conversation:
        now = utc_now()
        row = ConversationRow(id=f"conv_{uuid.uuid4().hex}", title=title, settings=settings or {},
                              created_at=now, updated_at=now)
        with self._sessions.begin() as session:
            session.add(row)
        return _conversation(row, messages=())

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        with self._sessions() as session:
            row = session.get(
                ConversationRow, conversation_id,
                options=[selectinload(ConversationRow.messages).selectinload(MessageRow.attachments)],
            )
            return _conversation(row, messages=tuple(map(_message, row.messages))) if row else None

    def update_conversation(
        self, conversation_id: str, title: str | None = None, settings: dict | None = None
    ) -> Conversation | None:
        with self._sessions.begin() as session:
            row = session.get(ConversationRow, conversation_id)
            if row is None:
                return None
            if title is not None:
                row.title = title
            if settings is not None:
                row.settings = settings
            row.updated_at = utc_now()
            return _conversation(row)

    def delete_conversation(self, conversation_id: str) -> bool:
        """Delete it with its messages, then any media no other message refers to."""
        with self._sessions.begin() as session:
            row = session.get(ConversationRow, conversation_id)
            if row is None:
                return False
            message_ids = select(MessageRow.id).where(MessageRow.conversation_id == conversation_id)
            used = set(session.scalars(select(MessageMediaRow.sha256).where(MessageMediaRow.message_id.in_(message_ids))))
            session.delete(row)
            session.flush()
            still_used = set(session.scalars(select(MessageMediaRow.sha256).where(MessageMediaRow.sha256.in_(used))))
            orphans = used - still_used
            if orphans:
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
    ) -> Message | None:
        """Add a message (committed on return); None if the conversation does not exist.

        Raises KeyError naming a media id that was never uploaded. An untitled conversation
        takes its title from its first user message.
        """
        media_ids = list(media_ids)
        with self._sessions.begin() as session:
            conversation = session.get(ConversationRow, conversation_id)
            if conversation is None:
                return None
            known = {row.sha256: row for row in session.scalars(select(MediaRow).where(MediaRow.sha256.in_(media_ids)))}
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

    def save_media(self, source: BinaryIO, mime_type: str, filename: str, max_bytes: int) -> MediaInfo:
        """Store bytes under their sha256 (once, however often they are sent); MediaTooLarge over max_bytes."""
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
        try:
            with self._sessions.begin() as session:
                existing = session.get(MediaRow, sha)
                if existing is not None:
                    return _media(existing)
                session.add(row)
        except IntegrityError:  # the same bytes uploaded at the same moment by another request
            return self.get_media(sha)
        return _media(row)

    def get_media(self, media_id: str) -> MediaInfo | None:
        if not _SHA256.match(media_id):
            return None
        with self._sessions() as session:
            row = session.get(MediaRow, media_id)
            return _media(row) if row else None

    def media_file(self, media_id: str) -> Path:
        return self._media_path(media_id)

    def _media_path(self, sha: str) -> Path:
        if not _SHA256.match(sha):
            raise ValueError(f"not a media id: {sha!r}")
        return self.media_dir / sha[:2] / sha


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


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
