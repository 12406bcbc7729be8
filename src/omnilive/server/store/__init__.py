"""Conversation history for the web app: SQLAlchemy (SQLite by default, PostgreSQL by URL)."""

from omnilive.server.store.repository import (
    Conversation,
    HistoryStore,
    MediaInfo,
    MediaTooLarge,
    Message,
    media_kind,
)

__all__ = ["Conversation", "HistoryStore", "MediaInfo", "MediaTooLarge", "Message", "media_kind"]
