"""Users and their API keys, in the history database (the same SQLAlchemy Base and engine).

    users 1─* api_keys      a key row holds the argon2 hash of the key, never the key

    store = AccountStore(connect(url))
    user, key = store.add_user("alice", is_admin=False)      # the key is returned once
    store.revoke("alice")          # the user and every key of theirs; or one key: "olk_<id>"

Revoking keeps the rows (and so the user's history, which stays theirs) and marks them revoked.
Methods block on SQL: call them off the event loop.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, String, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, relationship, sessionmaker

from omnilive.server.api_keys import KEY_PREFIX, hash_key, key_id_named, new_key, shown
from omnilive.server.store.models import Base, UTCDateTime, utc_now

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "user_" + 24 hex; owner of their rows
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # per-user quota overrides: {"requests_per_minute": 10, ...}; absent = the server's setting
    quotas: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    keys: Mapped[list[APIKeyRow]] = relationship(order_by="APIKeyRow.created_at", lazy="selectin")


class APIKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)  # the key id inside the key: not secret
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    hash: Mapped[str] = mapped_column(String(200))  # argon2id
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AccountError(Exception):
    """A request the accounts cannot do (name taken, no such user...); `code` names which."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.message, self.code = message, code


@dataclass(frozen=True)
class KeyInfo:
    id: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def shown(self) -> str:
        return shown(self.id)


@dataclass(frozen=True)
class User:
    id: str
    name: str
    is_admin: bool
    quotas: dict
    created_at: datetime
    revoked_at: datetime | None
    keys: tuple[KeyInfo, ...]

    @property
    def active_keys(self) -> tuple[KeyInfo, ...]:
        return tuple(k for k in self.keys if k.revoked_at is None)


@dataclass(frozen=True)
class KeyRecord:
    """What authentication needs about one active key: its hash and whose it is."""

    key_id: str
    hash: str
    user: User


class AccountStore:
    def __init__(self, engine: Engine):
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add_user(self, name: str, is_admin: bool = False, quotas: dict | None = None) -> tuple[User, str]:
        """A new user with one key; returns (user, key). The key is not stored, only its hash."""
        if not USER_NAME.match(name) or name.startswith(KEY_PREFIX):
            raise AccountError(f"'{name}' is not a valid user name: 1-64 letters, digits, '_', '.', '@' or '-', "
                               f"not starting with '{KEY_PREFIX}'.", "invalid_user_name")
        key_id, key = new_key()
        row = UserRow(id=f"user_{uuid.uuid4().hex[:24]}", name=name, is_admin=is_admin, quotas=dict(quotas or {}),
                      created_at=utc_now())
        row.keys = [APIKeyRow(id=key_id, hash=hash_key(key), created_at=row.created_at)]
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise AccountError(f"A user named '{name}' already exists.", "user_exists") from None
        return _user(row), key

    def add_key(self, name: str) -> tuple[KeyInfo, str]:
        key_id, key = new_key()
        hashed = hash_key(key)  # ~50 ms: outside the transaction
        with self._sessions.begin() as session:
            user = self._active(session, name)
            row = APIKeyRow(id=key_id, user_id=user.id, hash=hashed, created_at=utc_now())
            session.add(row)
        return KeyInfo(row.id, row.created_at, None), key

    def list_users(self) -> list[User]:
        with self._sessions() as session:
            return [_user(row) for row in session.scalars(select(UserRow).order_by(UserRow.created_at, UserRow.name))]

    def get_user(self, name: str) -> User | None:
        with self._sessions() as session:
            row = session.scalar(select(UserRow).where(UserRow.name == name))
            return _user(row) if row else None

    def update_user(self, name: str, is_admin: bool | None = None, quotas: dict | None = None) -> User:
        """Change admin rights and quota overrides (quotas: None = keep; {} = back to the defaults)."""
        with self._sessions.begin() as session:
            row = self._active(session, name)
            if is_admin is not None:
                row.is_admin = is_admin
            if quotas is not None:
                row.quotas = dict(quotas)
            session.flush()
            return _user(row)

    def revoke(self, target: str) -> str:
        """Revoke a user (by name: every key of theirs too) or one key (whole, or `olk_<id>`).

        Returns what was revoked, in words. AccountError when there is no such active user or key.
        """
        now = utc_now()
        with self._sessions.begin() as session:
            key_id = key_id_named(target)
            if key_id is not None:
                row = session.get(APIKeyRow, key_id)
                if row is None or row.revoked_at is not None:
                    raise AccountError(f"No active key {KEY_PREFIX}{key_id}…", "key_not_found")
                row.revoked_at = now
                owner = session.get(UserRow, row.user_id)
                return f"revoked key {KEY_PREFIX}{key_id}… of user {owner.name}"
            user = self._active(session, target)
            user.revoked_at = now
            session.execute(update(APIKeyRow).where(APIKeyRow.user_id == user.id, APIKeyRow.revoked_at.is_(None))
                            .values(revoked_at=now))
            return f"revoked user {user.name} and all their keys"

    def revoke_key(self, name: str, key_id: str) -> None:
        with self._sessions.begin() as session:
            user = self._active(session, name)
            row = session.get(APIKeyRow, key_id)
            if row is None or row.user_id != user.id or row.revoked_at is not None:
                raise AccountError(f"User '{name}' has no active key {KEY_PREFIX}{key_id}…", "key_not_found")
            row.revoked_at = utc_now()

    def key_record(self, key_id: str) -> KeyRecord | None:
        """The active key with this id, of an active user; None otherwise."""
        with self._sessions() as session:
            row = session.get(APIKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                return None
            user = session.get(UserRow, row.user_id)
            if user is None or user.revoked_at is not None:
                return None
            return KeyRecord(row.id, row.hash, _user(user))

    def is_active(self, user_id: str) -> bool:
        with self._sessions() as session:
            row = session.get(UserRow, user_id)
            return row is not None and row.revoked_at is None

    def has_users(self) -> bool:
        """Whether any user is active: then every /v1 request needs a key."""
        with self._sessions() as session:
            return bool(session.scalar(select(func.count()).select_from(UserRow).where(UserRow.revoked_at.is_(None))))

    @staticmethod
    def _active(session, name: str) -> UserRow:
        row = session.scalar(select(UserRow).where(UserRow.name == name))
        if row is None or row.revoked_at is not None:
            raise AccountError(f"No active user named '{name}'.", "user_not_found")
        return row


def _user(row: UserRow) -> User:
    keys = tuple(KeyInfo(k.id, k.created_at, k.revoked_at) for k in row.keys)
    return User(row.id, row.name, row.is_admin, dict(row.quotas or {}), row.created_at, row.revoked_at, keys)
