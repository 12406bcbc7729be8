"""A server of its own (no --api-key): open while it has no users, and says so; closed as soon as
`omnilive users add` gives it one; WebSocket events paced; SIGTERM drains (503 for new requests
while a stream in flight finishes); no key ever reaches its log.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.server.test_users import openai_client, users_cli, wait_for_status
from tests.server_process import ServerProcess

EVENTS_PER_SECOND = 50


@pytest.mark.slow
def test_open_until_a_user_exists_paced_events_and_sigterm_drain(tmp_path):
    server = ServerProcess(tmp_path / "data", env={"OMNILIVE_AUTH_CACHE_SECONDS": "1",
                                                   "OMNILIVE_REALTIME_MAX_EVENTS_PER_SECOND": str(EVENTS_PER_SECOND),
                                                   "OMNILIVE_DRAIN_SECONDS": "60",
                                                   "OMNILIVE_ADMIN_READS_CONVERSATIONS": "true"})
    with server:
        assert "No users and no API key" in server.log_tail(200)  # an open server says so at start
        assert httpx.get(f"{server.url}/v1/models").status_code == 200
        assert httpx.get(f"{server.url}/v1/me").json()["admin"] is True
        assert openai_client(server, "unused").models.list().data  # the SDK needs some key: any will do

        added = users_cli(server, "add", "root", "--admin")
        key = added.stdout.strip().split()[-1]
        assert wait_for_status(lambda: httpx.get(f"{server.url}/v1/models"), 401) == 401  # closed now
        client = openai_client(server, key)
        model = client.models.list().data[0].id

        _events_are_paced(server, key)
        _admins_may_read_conversations_when_allowed(server, key)

        stream = client.chat.completions.create(
            model=model, stream=True, max_tokens=40,
            messages=[{"role": "user", "content": "Count from one to twenty in words."}])
        chunks = iter(stream)
        next(chunks)  # under way
        server.process.send_signal(signal.SIGTERM)
        refused = wait_for_status(lambda: httpx.get(f"{server.url}/health"), 503, timeout_s=10)
        assert refused == 503
        late = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert late.status_code == 503 and late.json()["error"]["code"] == "server_draining"
        assert int(late.headers["retry-after"]) >= 1
        rest = list(chunks)  # the stream in flight runs to its end
        assert rest[-1].choices[0].finish_reason in ("stop", "length")
        assert server.process.wait(timeout=30) == 0  # then the server stops by itself
        log = server.log_path.read_text()
        assert key not in log and key[17:] not in log  # keys never logged
        assert "draining" in log


def _events_are_paced(server, key: str) -> None:
    """A burst past twice the rate is read at the rate: all answered, none dropped."""
    sent = 3 * EVENTS_PER_SECOND
    url = server.url.replace("http", "ws", 1) + "/v1/realtime"
    with connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{key}"]) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        started = time.monotonic()
        for _ in range(sent):
            ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        answered = [json.loads(ws.recv(timeout=30))["type"] for _ in range(sent)]
        elapsed = time.monotonic() - started
    assert answered == ["input_audio_buffer.cleared"] * sent
    assert elapsed >= (sent - 2 * EVENTS_PER_SECOND) / EVENTS_PER_SECOND * 0.9  # the burst, then the rate


def _admins_may_read_conversations_when_allowed(server, admin_key: str) -> None:
    """OMNILIVE_ADMIN_READS_CONVERSATIONS=true: an admin reads a user's chats (read only)."""
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"})
    user_key = admin.post("/v1/admin/users", json={"name": "eve"}).json()["key"]
    user = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {user_key}"})
    chat = user.post("/v1/history/conversations", json={"title": "eve's notes"}).json()
    user.post(f"/v1/history/conversations/{chat['id']}/messages", json={"role": "user", "content": "remember milk"})
    listed = admin.get("/v1/admin/users/eve/conversations").json()
    assert [c["title"] for c in listed["data"]] == ["eve's notes"]
    one = admin.get(f"/v1/admin/users/eve/conversations/{chat['id']}").json()
    assert one["messages"][0]["content"] == "remember milk"
    assert admin.get(f"/v1/history/conversations/{chat['id']}").status_code == 404  # still not in their own history
    assert user.get("/v1/admin/users/eve/conversations").status_code == 403  # users are not admins
