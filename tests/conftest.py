"""Shared fixtures. `server`: one real `omnilive serve` subprocess for the whole session.

It runs the real default engine, with an API key (so auth is tested on the same server) and a
small body limit (so the oversized-body case is cheap).
"""

from __future__ import annotations

import omnilive  # noqa: F401 - before any test imports torch: it sets up the OpenMP runtimes (see its __init__)

import httpx
import pytest

from tests.server_process import ServerProcess

TEST_API_KEY = "test-key-0123456789"
TEST_MAX_BODY_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    data_dir = tmp_path_factory.mktemp("omnilive-data")
    with ServerProcess(data_dir, api_key=TEST_API_KEY, max_body_bytes=TEST_MAX_BODY_BYTES) as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    """The official OpenAI client, pointed at the test server."""
    from openai import OpenAI

    with OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0, timeout=300) as openai_client:
        yield openai_client


@pytest.fixture(scope="session")
def http(server):
    """A raw HTTP client with the API key, for what the OpenAI client will not send."""
    with httpx.Client(base_url=server.url, headers=server.auth_headers, timeout=300) as raw:
        yield raw


@pytest.fixture(scope="session")
def model_id(client) -> str:
    return client.models.list().data[0].id
