"""Bad requests: each gets its 4xx in OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

CHAT = "/v1/chat/completions"
MODEL = "__served__"  # replaced by the served model's id


def _user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _audio_part(data: str, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def _silent_wav_b64() -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1600, np.float32), 16_000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


HELLO = [{"role": "user", "content": "hi"}]
NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"hello world").decode()
AUDIO_OUT = {"modalities": ["text", "audio"], "audio": {"voice": "no-such-voice"}}
PART = "messages[0].content[0]"


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HELLO, **fields}


# (case id, JSON body or raw bytes, status, param (None = not checked), code (None = not checked))
BAD_CHAT_REQUESTS = [
    ("malformed json", b'{"model": "x", "messages": [', 400, None, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None, None),
    ("missing messages", {"model": MODEL}, 400, "messages", "missing_required_parameter"),
    ("missing model", {"messages": HELLO}, 400, "model", "missing_required_parameter"),
    ("empty messages", chat(messages=[]), 400, "messages", None),
    ("content wrong type", chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", None),
    ("unknown role", chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role", None),
    ("unknown part type", chat(messages=_user({"type": "hologram"})), 400, PART, None),
    ("temperature wrong type", chat(temperature="hot"), 400, "temperature", None),
    ("temperature out of range", chat(temperature=7), 400, "temperature", None),
    ("unknown model", {"model": "gpt-17-ultra", "messages": HELLO}, 404, "model", "model_not_found"),
    ("n=2", chat(n=2), 400, "n", None),
    ("top_logprobs without logprobs", chat(top_logprobs=2), 400, None, None),
    ("max_tokens beyond context", chat(max_tokens=10_000_000), 400, "max_tokens", None),
    ("corrupt base64 image", chat(messages=_user(_image_part("data:image/png;base64,@@not*b64@@"))), 400, PART, None),
    ("image bytes not an image", chat(messages=_user(_image_part(NOT_AN_IMAGE))), 400, PART, None),
    ("empty audio", chat(messages=_user(_audio_part(""))), 400, PART, None),
    ("unsupported audio format", chat(messages=_user(_audio_part(_silent_wav_b64(), "midi"))),
     400, PART + ".input_audio.format", None),
    ("audio bytes that are an image", chat(messages=_user(_audio_part(_png_b64()))), 400, PART, None),
    ("remote image url refused", chat(messages=_user(_image_part("https://example.com/cat.png"))),
     400, PART, "remote_url_not_allowed"),
    ("unknown file id", chat(messages=_user(_image_part("file-0123456789abcdef01234567"))),
     404, PART, "file_not_found"),
    ("file part without id or data", chat(messages=_user({"type": "file", "file": {}})), 400, PART + ".file", None),
    ("unknown voice", chat(**AUDIO_OUT), 400, None, None),
]


def _assert_error_shape(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize("body, status, param, code", [case[1:] for case in BAD_CHAT_REQUESTS],
                         ids=[case[0] for case in BAD_CHAT_REQUESTS])
def test_bad_chat_request(http, model_id, body, status, param, code):
    if isinstance(body, dict):
        body = json.dumps({**body, "model": model_id} if body.get("model") == MODEL else body).encode()
    response = http.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    _assert_error_shape(response, status, param, code)


def test_oversized_body_is_refused_before_reading(http, server, model_id):
    too_big = b'{"model": "' + model_id.encode() + b'", "messages": [], "pad": "' + b"x" * server.max_body_bytes + b'"}'
    declared = http.post(CHAT, content=too_big, headers={"Content-Type": "application/json"})
    _assert_error_shape(declared, 413, code="request_too_large")

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        for start in range(0, len(too_big), 1 << 20):
            yield too_big[start:start + (1 << 20)]

    streamed = http.post(CHAT, content=chunked(), headers={"Content-Type": "application/json"})
    _assert_error_shape(streamed, 413, code="request_too_large")


def test_unknown_route_and_method(http):
    _assert_error_shape(http.get("/v1/no-such-thing"), 404, code="unknown_url")
    _assert_error_shape(http.delete("/v1/chat/completions"), 405)


def test_auth_required_on_api_routes(server, model_id):
    body = {"model": model_id, "messages": HELLO, "max_tokens": 1}
    missing = httpx.post(server.url + CHAT, json=body)
    _assert_error_shape(missing, 401, code="invalid_api_key")
    wrong = httpx.post(server.url + CHAT, json=body, headers={"Authorization": "Bearer wrong-key"})
    _assert_error_shape(wrong, 401, code="invalid_api_key")
    _assert_error_shape(httpx.get(server.url + "/v1/models"), 401, code="invalid_api_key")
    right = httpx.post(server.url + CHAT, json=body, headers=server.auth_headers, timeout=120)
    assert right.status_code == 200, right.text


def test_auth_through_the_official_client(server, model_id):
    from openai import AuthenticationError, OpenAI

    with OpenAI(base_url=server.url + "/v1", api_key="wrong-key", max_retries=0) as wrong:
        with pytest.raises(AuthenticationError) as raised:
            wrong.models.list()
    assert raised.value.code == "invalid_api_key"


def test_official_client_raises_typed_errors(client, model_id):
    from openai import BadRequestError, NotFoundError

    with pytest.raises(NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(BadRequestError) as bad:
        client.chat.completions.create(model=model_id, messages=HELLO, n=3)
    assert bad.value.param == "n"


def test_server_still_serves_after_bad_requests(client, model_id):
    response = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2, temperature=0)
    assert response.choices[0].message.content
