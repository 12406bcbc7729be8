"""Conversation history: the store on SQLite and PostgreSQL, and its REST API on a real server,
including a server killed with SIGKILL in the middle of a reply.

PostgreSQL runs on 127.0.0.1:5432 (trust auth) in CI and on dev machines; each test creates a
database with a random name and drops it at the end. Without a reachable server those cases skip.
"""

from __future__ import annotations

import io
import uuid

import httpx
import pytest

from omnilive.server.store import HistoryStore
from tests.server_process import ServerProcess

PG_HOST, PG_PORT = "127.0.0.1", 5432
MAX_MEDIA_BYTES = 64 * 1024
ME = "user_test"  # the owner of what these tests store


def _pg_admin():
    import psycopg

    last_error = None
    for user in ("postgres", "root"):
        try:
            return psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="postgres",
                                   autocommit=True, connect_timeout=3), user
        except psycopg.OperationalError as e:
            last_error = e
    pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}: {last_error}")


@pytest.fixture
def postgres_url():
    admin, user = _pg_admin()
    name = f"omnilive_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'omnilive.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database_url, tmp_path):
    opened = HistoryStore.open(database_url, tmp_path / "media")
    yield opened
    opened.close()


# -- the store itself ----------------------------------------------------------------------------


def test_messages_keep_their_order_media_and_reasoning(store):
    conversation = store.create_conversation(settings={"model": "m", "temperature": 0.3}, owner=ME)
    picture = store.save_media(io.BytesIO(b"\x89PNG fake"), "image/png", "cat.png", MAX_MEDIA_BYTES, owner=ME)
    store.append_message(conversation.id, "user", "What   is\nthis?", media_ids=[picture.id], owner=ME)
    store.append_message(conversation.id, "assistant", "A cat.", reasoning="It has whiskers.", owner=ME)
    store.append_message(conversation.id, "user", "Sure?", owner=ME)

    loaded = store.get_conversation(conversation.id, owner=ME)
    assert [m.role for m in loaded.messages] == ["user", "assistant", "user"]
    assert [m.content for m in loaded.messages] == ["What   is\nthis?", "A cat.", "Sure?"]
    assert loaded.messages[0].media[0].id == picture.id and loaded.messages[0].media[0].kind == "image"
    assert loaded.messages[1].reasoning == "It has whiskers."
    assert loaded.title == "What is this?"  # from the first user message, whitespace folded
    assert loaded.settings == {"model": "m", "temperature": 0.3}
    assert loaded.updated_at >= loaded.created_at


def test_list_rename_and_delete(store):
    first = store.create_conversation("first", owner=ME)
    second = store.create_conversation("second", owner=ME)
    store.append_message(first.id, "user", "bump", owner=ME)  # updating moves it to the top
    assert [c.id for c in store.list_conversations(owner=ME)][:2] == [first.id, second.id]
    assert store.update_conversation(second.id, title="renamed", owner=ME).title == "renamed"
    assert store.get_conversation(second.id, owner=ME).title == "renamed"
    assert store.delete_conversation(first.id, owner=ME)
    assert store.get_conversation(first.id, owner=ME) is None
    assert not store.delete_conversation(first.id, owner=ME)
    assert store.append_message(first.id, "user", "too late", owner=ME) is None


def test_media_is_stored_once_and_removed_with_its_last_conversation(store):
    kept = store.create_conversation("kept", owner=ME)
    dropped = store.create_conversation("dropped", owner=ME)
    shared = store.save_media(io.BytesIO(b"same bytes"), "audio/wav", "a.wav", MAX_MEDIA_BYTES, owner=ME)
    again = store.save_media(io.BytesIO(b"same bytes"), "audio/wav", "b.wav", MAX_MEDIA_BYTES, owner=ME)
    only_dropped = store.save_media(io.BytesIO(b"other bytes"), "video/mp4", "v.mp4", MAX_MEDIA_BYTES, owner=ME)
    assert again.id == shared.id and store.media_file(shared.id).read_bytes() == b"same bytes"

    store.append_message(kept.id, "user", "one", media_ids=[shared.id], owner=ME)
    store.append_message(dropped.id, "user", "two", media_ids=[shared.id, only_dropped.id], owner=ME)
    store.delete_conversation(dropped.id, owner=ME)
    assert store.get_media(shared.id, owner=ME) is not None and store.media_file(shared.id).exists()
    assert store.get_media(only_dropped.id, owner=ME) is None and not store.media_file(only_dropped.id).exists()


def test_unknown_media_and_oversized_media_are_refused(store):
    from omnilive.server.store import MediaTooLarge

    conversation = store.create_conversation(owner=ME)
    with pytest.raises(KeyError):
        store.append_message(conversation.id, "user", "x", media_ids=["0" * 64], owner=ME)
    with pytest.raises(MediaTooLarge):
        store.save_media(io.BytesIO(b"x" * (MAX_MEDIA_BYTES + 1)), "image/png", "big.png", MAX_MEDIA_BYTES, owner=ME)
    assert store.get_conversation(conversation.id, owner=ME).messages == ()
    assert not list(store.media_dir.glob("*.part"))  # no half-written file left behind
    assert store.get_media("../../etc/passwd", owner=ME) is None


def test_each_owner_sees_only_their_own(store):
    mine = store.create_conversation("mine", owner=ME)
    picture = store.save_media(io.BytesIO(b"my picture"), "image/png", "p.png", MAX_MEDIA_BYTES, owner=ME)
    store.append_message(mine.id, "user", "hello", media_ids=[picture.id], owner=ME)
    other = "user_other"
    assert store.list_conversations(owner=other) == [] and store.count_conversations(owner=other) == 0
    assert store.get_conversation(mine.id, owner=other) is None
    assert store.update_conversation(mine.id, title="taken", owner=other) is None
    assert not store.delete_conversation(mine.id, owner=other)
    assert store.append_message(mine.id, "user", "intruding", owner=other) is None
    assert store.get_media(picture.id, owner=other) is None
    theirs = store.create_conversation("theirs", owner=other)
    with pytest.raises(KeyError):  # knowing the sha256 of my picture does not let them attach it
        store.append_message(theirs.id, "user", "x", media_ids=[picture.id], owner=other)
    # uploading the same bytes makes them an owner too; the bytes are stored once
    again = store.save_media(io.BytesIO(b"my picture"), "image/png", "q.png", MAX_MEDIA_BYTES, owner=other)
    assert again.id == picture.id and store.get_media(picture.id, owner=other) is not None
    assert store.get_conversation(mine.id, owner=ME).title == "mine"
    assert store.conversations_by_owner() == {ME: 1, other: 1}


def test_a_history_from_before_users_belongs_to_the_operator(tmp_path):
    """A database written by a server without users (no owner column) is upgraded at open."""
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sqlalchemy.create_engine(url)
    with old.begin() as sql:
        sql.exec_driver_sql("CREATE TABLE conversations (id VARCHAR(40) PRIMARY KEY, title VARCHAR(200), "
                            "created_at DATETIME, updated_at DATETIME, settings JSON)")
        sql.exec_driver_sql("CREATE TABLE media (sha256 VARCHAR(64) PRIMARY KEY, kind VARCHAR(16), "
                            "mime_type VARCHAR(120), bytes BIGINT, filename VARCHAR(255), created_at DATETIME)")
        sql.exec_driver_sql("INSERT INTO conversations VALUES ('conv_old', 'Old chat', '2026-01-01 00:00:00', "
                            "'2026-01-01 00:00:00', '{}')")
        sql.exec_driver_sql(f"INSERT INTO media VALUES ('{'a' * 64}', 'image', 'image/png', 3, 'x.png', "
                            "'2026-01-01 00:00:00')")
    old.dispose()
    upgraded = HistoryStore.open(url, tmp_path / "media")
    try:
        operator = ""
        assert [c.title for c in upgraded.list_conversations(owner=operator)] == ["Old chat"]
        assert upgraded.get_media("a" * 64, owner=operator) is not None
        assert upgraded.list_conversations(owner=ME) == []
    finally:
        upgraded.close()


# -- the REST API on a real server, killed mid-reply ---------------------------------------------


@pytest.mark.slow
def test_history_api_survives_sigkill_mid_reply(database_url, tmp_path):
    server = ServerProcess(tmp_path / "data", database_url=database_url, api_key="history-key",
                           env={"OMNILIVE_MAX_MEDIA_BYTES": str(MAX_MEDIA_BYTES)})
    with server:
        api = httpx.Client(base_url=server.url, headers=server.auth_headers, timeout=60)
        assert httpx.get(f"{server.url}/v1/history/conversations").status_code == 401  # key required

        conversation = api.post("/v1/history/conversations", json={"settings": {"voice": "heart"}}).json()
        picture = api.post("/v1/history/media", files={"file": ("dot.png", b"\x89PNG tiny", "image/png")}).json()
        assert picture["kind"] == "image" and picture["bytes"] == 9
        turns = [
            {"role": "user", "content": "Look at this", "media": [picture["id"]]},
            {"role": "assistant", "content": "A dot.", "reasoning": "Small image."},
            {"role": "user", "content": "Count from one to two hundred, in words."},
        ]
        for turn in turns:
            assert api.post(f"/v1/history/conversations/{conversation['id']}/messages", json=turn).status_code == 201

        too_big = api.post("/v1/history/media", files={"file": ("big.png", b"x" * (MAX_MEDIA_BYTES + 1), "image/png")})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"
        missing = api.post(f"/v1/history/conversations/{conversation['id']}/messages",
                           json={"role": "user", "content": "x", "media": ["f" * 64]})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "media"

        _kill_while_streaming(server, api)

        server.start()
        api = httpx.Client(base_url=server.url, headers=server.auth_headers, timeout=60)
        loaded = api.get(f"/v1/history/conversations/{conversation['id']}").json()
        assert [(m["role"], m["content"]) for m in loaded["messages"]] == [(t["role"], t["content"]) for t in turns]
        assert loaded["messages"][0]["media"][0]["id"] == picture["id"]
        assert loaded["messages"][1]["reasoning"] == "Small image."
        assert loaded["title"] == "Look at this" and loaded["settings"] == {"voice": "heart"}
        assert api.get(f"/v1/history/media/{picture['id']}").content == b"\x89PNG tiny"

        renamed = api.patch(f"/v1/history/conversations/{conversation['id']}", json={"title": "Dots"}).json()
        assert renamed["title"] == "Dots"
        listed = api.get("/v1/history/conversations").json()
        assert listed["total"] == 1 and listed["data"][0]["title"] == "Dots" and listed["data"][0]["messages"] is None
        assert api.delete(f"/v1/history/conversations/{conversation['id']}").json()["deleted"] is True
        gone = api.get(f"/v1/history/conversations/{conversation['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "conversation_not_found"
        assert api.get(f"/v1/history/media/{picture['id']}").status_code == 404

        paths = api.get("/openapi.json").json()["paths"]
        assert {"/v1/history/conversations", "/v1/history/conversations/{conversation_id}/messages",
                "/v1/history/media"} <= set(paths)


def _kill_while_streaming(server: ServerProcess, api: httpx.Client) -> None:
    """Start a long streamed reply and SIGKILL the server once its tokens flow."""
    model = api.get("/v1/models").json()["data"][0]["id"]
    body = {"model": model, "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": "Write a detailed essay of about 500 words on the history of Rome."}]}
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break  # the reply is under way
        server.kill()
        remaining = []
        try:
            remaining.extend(lines)
        except httpx.HTTPError:
            pass  # the connection died with the server, as it should
    assert "data: [DONE]" not in remaining, "the reply finished before the kill: nothing was interrupted"
