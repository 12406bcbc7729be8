"""Per-user quotas on the real server, through the official openai client: over a limit comes a 429
in OpenAI's error shape with Retry-After, for that user only; /metrics counts usage by user name.
"""

from __future__ import annotations

import json
import time

import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.metrics import wait_until_idle
from tests.server.test_users import add_user, as_user, openai_client, unique

HELLO = [{"role": "user", "content": "Say hi."}]


def assert_rate_limited(error: openai.RateLimitError, code: str) -> None:
    assert error.status_code == 429
    assert error.body["code"] == code and error.body["type"] == "rate_limit_error" and error.body["message"]
    assert int(error.response.headers["retry-after"]) >= 1


def test_requests_per_minute_limits_one_user_not_another(server, http):
    limited_key, free_key = add_user(http, unique("rpm"), quotas={"requests_per_minute": 2}), add_user(http, unique("free"))
    limited, free = openai_client(server, limited_key), openai_client(server, free_key)
    limited.models.list()
    limited.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        limited.models.list()
    assert_rate_limited(refused.value, "rate_limit_exceeded")
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    for _ in range(3):
        free.models.list()  # another user's budget is their own


def test_concurrent_streams_and_tokens_per_minute(server, http, model_id):
    name = unique("streamer")
    key = add_user(http, name, quotas={"concurrent_streams": 1, "tokens_per_minute": 1_000_000})
    client = openai_client(server, key)
    stream = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=40, stream=True)
    next(iter(stream))  # the first reply is under way
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
    assert_rate_limited(refused.value, "concurrent_requests_exceeded")
    stream.close()  # the slot is given back once the server sees the stream end
    assert wait_until_idle(http) == 0
    patient = client.with_options(max_retries=3)  # as a real client: honour Retry-After
    reply = patient.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
    assert reply.usage.total_tokens > 2

    http.patch(f"/v1/admin/users/{name}", json={"quotas": {"concurrent_streams": 1, "tokens_per_minute": 1}})
    with pytest.raises(openai.RateLimitError) as refused:  # the last minute already used more than 1 token
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
    assert_rate_limited(refused.value, "tokens_rate_limit_exceeded")
    assert client.models.list().data  # what costs no tokens still works

    metrics = http.get("/metrics").text
    prompt = [line for line in metrics.splitlines() if line.startswith(f'omnilive_prompt_tokens_total{{user="{name}"}}')]
    assert prompt and float(prompt[0].split()[-1]) >= reply.usage.prompt_tokens
    assert f'omnilive_rate_limited_requests_total{{quota="tokens_rate_limit_exceeded",user="{name}"}} 1.0' in metrics
    assert f'omnilive_user_requests_total{{user="{name}"}} 3.0' in metrics  # the refused ones do not count
    assert key not in metrics and key[:16] not in metrics  # labelled by name, never by key


def test_upload_bytes_per_day(server, http):
    key = add_user(http, unique("uploader"), quotas={"upload_bytes_per_day": 1000})
    client, api = openai_client(server, key), as_user(server, key)
    client.files.create(file=("a.txt", b"a" * 600, "text/plain"), purpose="user_data")
    with pytest.raises(openai.RateLimitError) as refused:
        client.files.create(file=("b.txt", b"b" * 600, "text/plain"), purpose="user_data")
    assert_rate_limited(refused.value, "upload_quota_exceeded")
    assert int(refused.value.response.headers["retry-after"]) > 60  # the first upload leaves the window in a day
    media = api.post("/v1/history/media", files={"file": ("c.png", b"c" * 600, "image/png")})
    assert media.status_code == 429 and media.json()["error"]["code"] == "upload_quota_exceeded"
    assert api.post("/v1/history/media", files={"file": ("d.png", b"d" * 300, "image/png")}).status_code == 201
    assert len(client.files.list().data) == 1  # the refused upload left nothing behind


def test_a_realtime_session_holds_a_stream_slot(server, http):
    key = add_user(http, unique("talker"), quotas={"concurrent_streams": 1})
    url = server.url.replace("http", "ws", 1) + "/v1/realtime"
    protocols = ["realtime", f"openai-insecure-api-key.{key}"]
    with connect(url, subprotocols=protocols) as first:
        assert json.loads(first.recv(timeout=30))["type"] == "session.created"
        with pytest.raises(InvalidStatus) as refused:  # the handshake itself gets the 429
            connect(url, subprotocols=protocols)
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert json.loads(refused.value.response.body)["error"]["code"] == "concurrent_requests_exceeded"
    assert wait_until_idle(http) == 0
    deadline = time.monotonic() + 10  # the slot comes back once the server sees the socket close
    while True:
        try:
            with connect(url, subprotocols=protocols) as again:
                assert json.loads(again.recv(timeout=30))["type"] == "session.created"
            break
        except InvalidStatus:
            assert time.monotonic() < deadline
            time.sleep(0.2)
