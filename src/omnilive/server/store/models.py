"""SQLAlchemy 2.0 tables of the conversation history kept for the web app.

    conversations 1─* messages *─* media   (through message_media, in attachment order)
    media 1─* media_owners                  (who uploaded the bytes: only they may read or attach them)

Media bytes live on disk, named by their sha256 (see repository.MediaFiles); the `media` row
says what the bytes are. The same picture sent twice is stored once. Portable types only, so
the same models run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite hands naive ones back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "conv_" + 32 hex
    # the user it belongs to (accounts.UserRow.id); "" = the operator: --api-key or an open server
    owner: Mapped[str] = mapped_column(String(40), default="", server_default="", index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, index=True)
    # what the web app had set for this chat: model, voice, system prompt, temperature...
    settings: Mapped[dict] = mapped_column(JSON, default=dict)

    messages: Mapped[list[MessageRow]] = relationship(
        back_populates="conversation", order_by="MessageRow.id",
        cascade="all, delete-orphan", passive_deletes=True,
    )


class MessageRow(Base):
    __tablename__ = "messages"

    # an autoincrement integer also gives the order of messages, on both backends
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    reasoning: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)

    conversation: Mapped[ConversationRow] = relationship(back_populates="messages")
    attachments: Mapped[list[MessageMediaRow]] = relationship(
        order_by="MessageMediaRow.position", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )


class MediaRow(Base):
    __tablename__ = "media"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | audio | video | file
    mime_type: Mapped[str] = mapped_column(String(120))
    bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class MediaOwnerRow(Base):
    """Bytes are stored once (by sha256) however many users upload them; each uploader owns them."""

    __tablename__ = "media_owners"

    sha256: Mapped[str] = mapped_column(ForeignKey("media.sha256", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class MessageMediaRow(Base):
    __tablename__ = "message_media"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("media.sha256"), index=True)

    media: Mapped[MediaRow] = relationship(lazy="joined")
