"""A first start assembles the packaged models into the cache and says so on the console, one
line per model; a second start on the same cache assembles nothing."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow


def _start_and_stop(server: ServerProcess) -> str:
    """The console output of one start (until /v1/models answers)."""
    start = server.log_path.stat().st_size if server.log_path.exists() else 0
    with server:
        models = httpx.get(f"{server.url}/v1/models", headers=server.auth_headers, timeout=30)
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "omnilive-small"
    return server.log_path.read_bytes()[start:].decode(errors="replace")


def _model_lines(console: str) -> dict[str, str]:
    """model name → the text of its progress line."""
    names = ("smollm2-135m", "whisper-base", "hibari-tts", "rapidocr")
    return {m.group(1): m.group(2) for m in re.finditer(rf"({'|'.join(names)})\s+(.*)", console)}


def test_second_start_finds_the_assembled_models_in_the_cache(tmp_path):
    cache = tmp_path / "cache"
    server = ServerProcess(tmp_path / "data", api_key="k", args=["--llm", "smollm2-135m"],
                           env={"OMNILIVE_CACHE_DIR": str(cache)})

    first = _model_lines(_start_and_stop(server))
    assert set(first) == {"smollm2-135m", "whisper-base", "hibari-tts", "rapidocr"}, first
    assert all(line.startswith("ready") for line in first.values()), first
    assert first["whisper-base"].startswith("ready: assembled 145 MB from 2 packages"), first
    model_bin = (cache / "whisper-base-ct2" / "model.bin").stat()

    second = _model_lines(_start_and_stop(server))
    assert second["whisper-base"].startswith("ready: assembled earlier, from the cache"), second
    assert not any("assembled 145 MB" in line for line in second.values()), second
    again = (cache / "whisper-base-ct2" / "model.bin").stat()
    assert (again.st_ino, again.st_mtime_ns) == (model_bin.st_ino, model_bin.st_mtime_ns)
