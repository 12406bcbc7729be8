"""`omnilive serve --ray` with no address: omnilive starts a local Ray cluster, serves through
it, and takes every process of it down on SIGTERM. (tests/server/test_scale_out.py covers a
cluster the test starts; this module runs after that one's cluster is gone.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.server.test_scale_out import MODEL_ARGS, REPLICA
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_local_cluster_serves_and_goes_away_with_the_server(tmp_path):
    server = ServerProcess(tmp_path / "data", args=[*MODEL_ARGS, "--ray", "--replicas", "1"]).start()
    try:
        health = httpx.get(server.url + "/health")
        assert health.status_code == 200 and health.headers[REPLICA]
        with OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=client.models.list().data[0].id, max_tokens=4, temperature=0,
                messages=[{"role": "user", "content": "Say hi."}])
            assert raw.parse().choices[0].message.content and raw.headers[REPLICA] == health.headers[REPLICA]

        from websockets.sync.client import connect

        with connect(server.url.replace("http", "ws", 1) + "/v1/realtime") as ws:
            created = json.loads(ws.recv(timeout=60))
        assert created["type"] == "session.created" and created[REPLICA] == health.headers[REPLICA]

        process, ray_processes = server.process, _descendants(server.process.pid)
        assert len(ray_processes) >= 3  # GCS, raylet, the replica's worker, ...
        started = time.monotonic()
    finally:
        server.stop()  # SIGTERM, then SIGKILL after 30 s
    assert time.monotonic() - started < 25, "shutting down took too long"
    assert process.returncode == 0, server.log_tail()
    deadline = time.monotonic() + 15
    while (left := {pid for pid in ray_processes if _running(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in left]
