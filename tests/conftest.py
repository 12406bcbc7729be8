"""Shared fixtures. `server`: one real `omnilive serve` subprocess for the whole session.

It runs the real default engine, with an API key (so auth is tested on the same server) and a
small body limit (so the oversized-body case is cheap). The assembled-model cache is shared
with normal use (OMNILIVE_CACHE_DIR, else the default data dir's): building it takes a
while, so only the first session pays for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_SRC = Path(__file__).resolve().parent.parent / "src"
STARTUP_TIMEOUT_S = 420  # a first run assembles and dequantises the packaged models
TEST_API_KEY = "test-key-0123456789"
TEST_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RunningServer:
    url: str  # http://127.0.0.1:<port>
    api_key: str
    data_dir: Path
    log_path: Path
    max_body_bytes: int

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_cache_dir() -> str:
    from omnilive.server.settings import Settings

    return str(Settings().models_dir)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> RunningServer:
    data_dir = tmp_path_factory.mktemp("omnilive-data")
    log_path = data_dir / "server.log"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_SRC), os.environ.get("PYTHONPATH")])),
        "OMNILIVE_CACHE_DIR": os.environ.get("OMNILIVE_CACHE_DIR") or _default_cache_dir(),
        "OMNILIVE_MAX_BODY_BYTES": str(TEST_MAX_BODY_BYTES),
    }
    command = [sys.executable, "-m", "omnilive", "serve", "--port", str(port),
               "--data-dir", str(data_dir), "--api-key", TEST_API_KEY]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    running = RunningServer(f"http://127.0.0.1:{port}", TEST_API_KEY, data_dir, log_path, TEST_MAX_BODY_BYTES)
    try:
        _wait_healthy(running, process)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(running: RunningServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} during start-up:\n{running.log_tail()}")
        try:
            if httpx.get(f"{running.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{running.log_tail()}")


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
