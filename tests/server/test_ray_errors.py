"""Ray Serve's proxy middleware (server/ray_errors.py) on plain ASGI apps: an error that no
replica wrote becomes OpenAI's error body; a replica's own answers pass untouched."""

from __future__ import annotations

import json

import httpx
import pytest

from omnilive.server.app import REPLICA_HEADER
from omnilive.server.ray_errors import REPLICA_HEADER as HEADER_THE_PROXY_LOOKS_FOR
from omnilive.server.ray_errors import RayErrorsAsOpenAI, proxy_middlewares


def answering(status: int, body: bytes, headers: list[tuple[bytes, bytes]]):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body[:3], "more_body": True})
        await send({"type": "http.response.body", "body": body[3:]})

    return app


async def get(app) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=RayErrorsAsOpenAI(app)), base_url="http://t") as c:
        return await c.get("/v1/models")


@pytest.mark.parametrize("status,body,kind", [
    (500, b"", "server_error"), (503, b"Deployment 'omnilive' is unavailable", "server_error"),
    (408, b"Request abc timed out after 1s.", "invalid_request_error")])
async def test_rays_plain_text_errors_become_openai_errors(status, body, kind):
    response = await get(answering(status, body, [(b"content-type", b"text/plain"), (b"retry-after", b"2")]))
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "2"  # Ray's other headers stay
    error = response.json()["error"]
    assert error["type"] == kind and error["code"] == f"ray_serve_{status}" and error["param"] is None
    assert error["message"] == (body.decode() or error["message"]) and error["message"]


async def test_a_replicas_own_answers_pass_untouched():
    body = json.dumps({"error": {"message": "no", "type": "invalid_request_error", "param": None, "code": None}})
    headers = [(b"content-type", b"application/json"), (HEADER_THE_PROXY_LOOKS_FOR, b"r1@host:1")]
    response = await get(answering(400, body.encode(), headers))
    assert response.status_code == 400 and response.text == body
    ok = await get(answering(200, b"plain ok", [(b"content-type", b"text/plain")]))
    assert ok.status_code == 200 and ok.text == "plain ok"


@pytest.mark.parametrize("how", ["returns", "raises"])
async def test_a_proxy_that_gives_up_without_answering_gives_a_500_in_openai_shape(how):
    async def replica_died(scope, receive, send):  # Ray's proxy returns without a word when its replica died
        if how == "raises":
            raise RuntimeError("ActorDiedError: the replica died")

    response = await get(replica_died)
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] == "ray_serve_500"


def test_the_header_is_the_apps_and_ray_gets_starlette_middleware():
    assert HEADER_THE_PROXY_LOOKS_FOR == REPLICA_HEADER.encode()
    (middleware,) = proxy_middlewares()
    assert middleware.cls is RayErrorsAsOpenAI
