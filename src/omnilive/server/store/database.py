"""One SQLAlchemy engine for the history and the accounts, shared by `serve` and `omnilive users`.

    engine = connect("sqlite:///data/omnilive.db")   # tables created, older databases upgraded

The CLI's `users` commands open the same database as a running server (SQLite in WAL mode lets
both write; PostgreSQL is a server anyway), so a user added there can sign in at once.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine

from omnilive.server.store import accounts  # noqa: F401 - registers the account tables on Base
from omnilive.server.store.models import Base

# the owner of rows written before there were users: the operator (--api-key, or an open server)
OPERATOR_OWNER = ""


def connect(database_url: str) -> Engine:
    """Connect, create the tables that are missing, and upgrade a database from before users."""
    if database_url.startswith("postgresql://"):  # plain URLs mean psycopg 3, not psycopg2
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(database_url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    needs_owner_column = _lacks_owner_column(engine)
    Base.metadata.create_all(engine)
    if needs_owner_column:
        _add_owner_column(engine)
    return engine


def _lacks_owner_column(engine: Engine) -> bool:
    tables = inspect(engine)
    if not tables.has_table("conversations"):
        return False
    return "owner" not in {column["name"] for column in tables.get_columns("conversations")}


def _add_owner_column(engine: Engine) -> None:
    """A history from before users belongs to the operator: its conversations and media keep working."""
    with engine.begin() as connection:
        connection.execute(text(
            f"ALTER TABLE conversations ADD COLUMN owner VARCHAR(40) NOT NULL DEFAULT '{OPERATOR_OWNER}'"))
        connection.execute(text("CREATE INDEX IF NOT EXISTS ix_conversations_owner ON conversations (owner)"))
        connection.execute(text(
            "INSERT INTO media_owners (sha256, owner, created_at) SELECT sha256, :owner, created_at FROM media"),
            {"owner": OPERATOR_OWNER})


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")  # `omnilive users` and the server may write at once
    cursor.close()
