"""Users and keys on the real server: `omnilive users` against its live database, the admin API,
and isolation between two users through the official openai client and the history API.

The session server runs with an operator key (--api-key); users made here get keys of their own.
Names carry a random suffix: the server is shared with the other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.server_process import REPO_SRC


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def add_user(http, name: str, admin: bool = False, quotas: dict | None = None) -> str:
    """A new user through the admin API (as the operator); returns their key."""
    response = http.post("/v1/admin/users", json={"name": name, "admin": admin, "quotas": quotas or {}})
    assert response.status_code == 201, response.text
    return response.json()["key"]


def openai_client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def as_user(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def users_cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    env.pop("OMNILIVE_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "omnilive", "users", *args, "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, env=env, timeout=60)


def wait_for_status(request, status: int, timeout_s: float = 20.0) -> int:
    """Poll until `request()` answers `status` (a CLI revocation reaches a running server's key cache
    within its auth_cache_seconds)."""
    deadline = time.monotonic() + timeout_s
    while (got := request().status_code) != status and time.monotonic() < deadline:
        time.sleep(0.5)
    return got


# -- the CLI on a running server's database ------------------------------------------------------


def test_cli_users_add_keys_list_and_revoke_on_a_running_server(server, model_id):
    name = unique("carol")
    added = users_cli(server, "add", name)
    assert added.returncode == 0, added.stderr
    first_key = added.stdout.strip().splitlines()[-1].split()[-1]  # the last word of the last line
    assert first_key.startswith("olk_")
    assert openai_client(server, first_key).models.list().data[0].id == model_id  # at once, no restart

    second = users_cli(server, "keys", "add", name)
    assert second.returncode == 0, second.stderr
    second_key = second.stdout.strip().splitlines()[-1].split()[-1]
    assert second_key != first_key
    assert as_user(server, second_key).get("/v1/me").json()["name"] == name

    listed = users_cli(server, "list")
    line = next(row for row in listed.stdout.splitlines() if row.startswith(name))
    first_id, second_id = first_key[:16], second_key[:16]  # "olk_" + key id: what listings show
    assert first_id in line and second_id in line
    assert first_key not in listed.stdout and second_key not in listed.stdout  # keys are shown once, ever

    db = b"".join(path.read_bytes() for path in server.data_dir.glob("omnilive.db*"))
    assert first_key.encode() not in db and first_key[17:].encode() not in db  # stored hashed only

    changed = users_cli(server, "set", name, "--requests-per-minute", "700", "--admin")
    assert changed.returncode == 0 and "requests_per_minute=700" in changed.stdout
    deadline = time.monotonic() + 20  # the running server's key cache sees it within auth_cache_seconds
    while (me := as_user(server, second_key).get("/v1/me").json())["quotas"]["requests_per_minute"] != 700:
        assert time.monotonic() < deadline, me
        time.sleep(0.5)
    assert me["admin"] is True

    revoked = users_cli(server, "revoke", first_id)
    assert revoked.returncode == 0 and "revoked key" in revoked.stdout
    assert wait_for_status(lambda: as_user(server, first_key).get("/v1/models"), 401) == 401
    assert as_user(server, second_key).get("/v1/models").status_code == 200  # the user's other key still works

    assert users_cli(server, "revoke", name).returncode == 0
    assert wait_for_status(lambda: as_user(server, second_key).get("/v1/models"), 401) == 401
    assert users_cli(server, "revoke", name).returncode == 1  # nothing left to revoke: said, not hidden
    bad = users_cli(server, "add", "not/a name")
    assert bad.returncode == 1 and "not a valid user name" in bad.stderr


# -- the admin API --------------------------------------------------------------------------------


def test_admin_api_manages_users_and_reads_usage_not_conversations(server, http):
    boss, worker = unique("boss"), unique("worker")
    boss_key = add_user(http, boss, admin=True)
    worker_key = add_user(http, worker, quotas={"requests_per_minute": 1000})
    boss_api, worker_api = as_user(server, boss_key), as_user(server, worker_key)

    chat = worker_api.post("/v1/history/conversations", json={"title": "private plans"}).json()
    assert worker_api.get("/v1/me").json() == {
        "object": "user", "name": worker, "admin": False,
        "quotas": {"requests_per_minute": 1000, "tokens_per_minute": 0, "concurrent_streams": 0,
                   "upload_bytes_per_day": 0}}

    assert worker_api.get("/v1/admin/users").status_code == 403  # not an admin
    listed = {u["name"]: u for u in boss_api.get("/v1/admin/users").json()["data"]}
    assert listed[worker]["usage"]["conversations"] == 1 and listed[worker]["usage"]["requests"] >= 2
    assert listed[worker]["quota_overrides"] == {"requests_per_minute": 1000}
    assert all(k["id"].endswith("…") for k in listed[worker]["keys"])
    assert worker_key not in boss_api.get("/v1/admin/users").text
    # an admin manages users; their chats stay theirs
    assert boss_api.get(f"/v1/history/conversations/{chat['id']}").status_code == 404
    refused = boss_api.get(f"/v1/admin/users/{worker}/conversations")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_reads_conversations_off"

    assert boss_api.post("/v1/admin/users", json={"name": worker}).status_code == 409
    assert boss_api.post("/v1/admin/users", json={"name": "no spaces"}).status_code == 400
    assert boss_api.post("/v1/admin/users", json={"name": unique("x"), "quotas": {"requests_per_minute": -1}}
                         ).status_code == 400
    patched = boss_api.patch(f"/v1/admin/users/{worker}", json={"quotas": {"tokens_per_minute": 5000}}).json()
    assert patched["quota_overrides"] == {"tokens_per_minute": 5000}
    assert worker_api.get("/v1/me").json()["quotas"]["tokens_per_minute"] == 5000  # seen at once

    extra = boss_api.post(f"/v1/admin/users/{worker}/keys").json()
    assert as_user(server, extra["key"]).get("/v1/me").json()["name"] == worker
    key_id = extra["id"].removesuffix("…")
    assert boss_api.delete(f"/v1/admin/users/{worker}/keys/{key_id}").status_code == 200
    assert as_user(server, extra["key"]).get("/v1/me").status_code == 401  # through the API: at once
    assert worker_api.get("/v1/me").status_code == 200

    assert boss_api.delete(f"/v1/admin/users/{worker}").json()["revoked_at"] is not None
    assert worker_api.get("/v1/me").status_code == 401
    assert boss_api.get("/v1/admin/users/no-such-user").status_code == 404


# -- isolation between two users ------------------------------------------------------------------


def test_two_users_see_only_their_own_files_conversations_and_media(server, http, model_id):
    alice_key, bob_key = add_user(http, unique("alice")), add_user(http, unique("bob"))
    alice, bob = openai_client(server, alice_key), openai_client(server, bob_key)
    alice_api, bob_api = as_user(server, alice_key), as_user(server, bob_key)

    uploaded = alice.files.create(file=("notes.txt", b"alice's secret notes", "text/plain"), purpose="user_data")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(uploaded.id)
    assert uploaded.id not in [f.id for f in bob.files.list()]
    assert uploaded.id in [f.id for f in alice.files.list()]
    with pytest.raises(openai.NotFoundError) as refused:  # nor can bob's chat read alice's file
        bob.chat.completions.create(model=model_id, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "file", "file": {"file_id": uploaded.id}}]}])
    assert refused.value.body["code"] == "file_not_found"

    picture = alice_api.post("/v1/history/media", files={"file": ("cat.png", b"\x89PNG alice", "image/png")}).json()
    chat = alice_api.post("/v1/history/conversations", json={"title": "alice's chat"}).json()
    turn = {"role": "user", "content": "hello", "media": [picture["id"]]}
    assert alice_api.post(f"/v1/history/conversations/{chat['id']}/messages", json=turn).status_code == 201

    path = f"/v1/history/conversations/{chat['id']}"
    for response in (bob_api.get(path), bob_api.patch(path, json={"title": "mine now"}), bob_api.delete(path),
                     bob_api.post(f"{path}/messages", json={"role": "user", "content": "hi"})):
        assert response.status_code == 404 and response.json()["error"]["code"] == "conversation_not_found"
    assert bob_api.get(f"/v1/history/media/{picture['id']}").status_code == 404
    bobs = bob_api.post("/v1/history/conversations", json={}).json()
    attach = bob_api.post(f"/v1/history/conversations/{bobs['id']}/messages", json=turn)
    assert attach.status_code == 400 and attach.json()["error"]["code"] == "media_not_found"
    assert [c["id"] for c in bob_api.get("/v1/history/conversations").json()["data"]] == [bobs["id"]]

    mine = alice_api.get(path).json()  # all still there, untouched
    assert mine["title"] == "alice's chat" and mine["messages"][0]["media"][0]["id"] == picture["id"]
    assert alice_api.get(f"/v1/history/media/{picture['id']}").content == b"\x89PNG alice"
    assert chat["id"] not in [c["id"] for c in http.get("/v1/history/conversations").json()["data"]]  # operator


# -- realtime ------------------------------------------------------------------------------------


def test_realtime_needs_a_key_and_takes_a_client_secret(server, http):
    url = server.url.replace("http", "ws", 1) + "/v1/realtime"
    with pytest.raises(InvalidStatus, match="403"):
        connect(url)
    with pytest.raises(InvalidStatus, match="403"):
        connect(url, subprotocols=["realtime", "openai-insecure-api-key.olk_000000000000_" + "0" * 64])

    name = unique("dana")
    key = add_user(http, name)
    secret = openai_client(server, key).realtime.client_secrets.create(expires_after={"anchor": "created_at",
                                                                                        "seconds": 60})
    assert secret.value.startswith("ek_") and secret.expires_at > time.time()
    with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"]) as browser:
        assert json.loads(browser.recv(timeout=30))["type"] == "session.created"
    assert as_user(server, secret.value).get("/v1/models").status_code == 401  # realtime sessions only
    with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{key}"]) as with_key:
        assert with_key.subprotocol == "realtime"

    http.delete(f"/v1/admin/users/{name}")
    with pytest.raises(InvalidStatus, match="403"):  # a revoked user's secrets end with them
        connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"])


def test_cors_is_closed_by_default(server):
    """No --cors-origin: a page on another origin gets no permission to read the API."""
    preflight = httpx.options(f"{server.url}/v1/models", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://evil.example", **server.auth_headers})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
