"""Conversation history for the web app, and the users and keys that own it: SQLAlchemy (SQLite by
default, PostgreSQL by URL)."""

from omnilive.server.store.accounts import AccountError, AccountStore, KeyInfo, KeyRecord, User
from omnilive.server.store.database import OPERATOR_OWNER, connect
from omnilive.server.store.repository import (
    Conversation,
    HistoryStore,
    MediaInfo,
    MediaTooLarge,
    Message,
    media_kind,
)

__all__ = [
    "AccountError", "AccountStore", "Conversation", "HistoryStore", "KeyInfo", "KeyRecord", "MediaInfo",
    "MediaTooLarge", "Message", "OPERATOR_OWNER", "User", "connect", "media_kind",
]
