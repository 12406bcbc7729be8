"""`omnilive serve --ray` on a real Ray cluster that the test starts: two nodes on this machine
(one CPU each), joined with --ray-address, two replicas of the embedded default (smollm2,
one thread each), history in a fresh PostgreSQL database.

What a client sees must not change: the official openai client gets answers, SSE chunks equal
the single-process server's, a client that leaves aborts its request on the replica running
it, a realtime session stays on one replica. Every response names its replica
(`x-omnilive-replica`), which is how the spread is seen. Last, a replica's process is killed
with SIGKILL: the request in flight on it fails (no hang), Ray starts a new replica, and new
requests succeed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from tests.server.test_realtime import Realtime
from tests.server.test_store import PG_HOST, PG_PORT, _pg_admin
from tests.server_process import REPO_SRC, ServerProcess, default_cache_dir

pytestmark = pytest.mark.slow

API_KEY = "ray-test-key"
REPLICA = "x-omnilive-replica"
MODEL_ARGS = ["--llm", "smollm2-135m", "--threads", "1"]
PROMPTS = ["Name three colours.", "What is the capital of France? Answer in one sentence."]
MAX_TOKENS = 24


def _stream_pieces(client: OpenAI, model: str, prompt: str) -> list[tuple]:
    """Each streamed chunk's (role, content, finish_reason): what a client reads, minus ids."""
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True)
    return [(c.choices[0].delta.role, c.choices[0].delta.content, c.choices[0].finish_reason)
            for c in stream if c.choices]


def _openai(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key or "none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def single_process_streams(tmp_path_factory) -> dict[str, list[tuple]]:
    """The single-process server's greedy streams of PROMPTS; it is stopped before Ray starts."""
    with ServerProcess(tmp_path_factory.mktemp("single"), args=MODEL_ARGS) as single, _openai(single) as client:
        model = client.models.list().data[0].id
        return {prompt: _stream_pieces(client, model, prompt) for prompt in PROMPTS}


@pytest.fixture(scope="module")
def cluster():
    """A two-node Ray cluster on this machine, started by the test (not by omnilive)."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
    started = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    started.add_node(**node)
    started.wait_for_nodes()
    yield started
    started.shutdown()


@pytest.fixture(scope="module")
def module_postgres_url():
    """A fresh PostgreSQL database for the module, dropped at its end."""
    admin, user = _pg_admin()
    name = f"omnilive_ray_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def ray_server(single_process_streams, cluster, module_postgres_url, tmp_path_factory):
    args = [*MODEL_ARGS, "--ray", "--ray-address", cluster.address, "--replicas", "2"]
    with ServerProcess(tmp_path_factory.mktemp("ray"), database_url=module_postgres_url, api_key=API_KEY,
                       args=args) as server:
        # /health answers once the first replica is up; omnilive says when all of them are
        deadline = time.monotonic() + 300
        while "omnilive on Ray Serve" not in server.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline and server.process.poll() is None, server.log_tail()
            time.sleep(0.5)
        yield server


@pytest.fixture(scope="module")
def client(ray_server):
    with _openai(ray_server) as openai_client:
        yield openai_client


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.models.list().data[0].id


def _ask(client: OpenAI, model: str, prompt: str, max_tokens: int = 8) -> tuple[str, str]:
    """(the answer, the replica that gave it)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0)
    return raw.parse().choices[0].message.content, raw.headers[REPLICA]


def test_the_openai_client_gets_answers_through_ray(client, model_id):
    answer, replica = _ask(client, model_id, "What is the capital of France?", max_tokens=16)
    assert "Paris" in answer
    replica_id, _, where = replica.partition("@")
    assert replica_id and where.rsplit(":", 1)[1].isdigit(), replica  # <replica id>@<host>:<pid>


def test_concurrent_requests_are_served_by_both_replicas(client, model_id):
    prompts = [f"Count from {n} to {n + 3}." for n in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: _ask(client, model_id, p), prompts))
    assert all(text for text, _ in answers)
    assert len({replica for _, replica in answers}) == 2, answers


def test_every_response_names_its_replica(ray_server):
    seen, deadline = set(), time.monotonic() + 90
    while len(seen) < 2 and time.monotonic() < deadline:  # Ray's router picks; give it time to pick both
        for path in ("/health", "/metrics", "/v1/models"):  # a 401 without the key is named too
            seen.add(httpx.get(ray_server.url + path).headers[REPLICA])  # a new connection each
    assert len(seen) == 2, seen
    page = httpx.get(ray_server.url + "/")  # the web app comes through Ray too
    assert page.status_code == 200 and "<html" in page.text.lower() and page.headers[REPLICA] in seen


def test_streams_equal_the_single_process_server_and_the_whole_reply(client, model_id, single_process_streams):
    for prompt in PROMPTS:
        pieces = _stream_pieces(client, model_id, prompt)
        assert pieces == single_process_streams[prompt]
        whole = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=MAX_TOKENS, temperature=0)
        assert whole.choices[0].message.content == "".join(content or "" for _, content, _ in pieces)
        assert whole.choices[0].finish_reason == pieces[-1][2]


def test_one_scrape_holds_both_replicas_metrics(ray_server, client, model_id):
    _ask(client, model_id, "Say hi.")  # so some request counters have samples
    deadline, replicas = time.monotonic() + 60, set()
    while len(replicas) < 2 and time.monotonic() < deadline:  # each replica reports every few seconds
        response = httpx.get(ray_server.url + "/metrics")
        samples = [line for line in response.text.splitlines() if line.startswith("omnilive_requests_running{")]
        replicas = {line.split('replica="', 1)[1].split('"', 1)[0] for line in samples}
        time.sleep(1)
    assert len(replicas) == 2 and response.headers[REPLICA] in replicas, response.text[:2000]
    type_lines = [line for line in response.text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))


def _replicas(ray_server) -> set[str]:
    """Both replicas' names, from fresh requests (an idle cluster spreads them at random)."""
    seen: set[str] = set()
    for _ in range(200):
        seen.add(httpx.get(ray_server.url + "/health").headers[REPLICA])
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only {seen} answered")


def _replica_metric(ray_server, replica: str, name: str, **labels: str) -> float:
    """`name` (its samples with `labels`) in /metrics as `replica` counts it; each replica has its
    own metrics, and labels each sample with its name."""
    wanted = [f'{key}="{value}"' for key, value in {**labels, "replica": replica}.items()]
    for _ in range(200):
        response = httpx.get(ray_server.url + "/metrics")  # a fresh connection, to reach either node
        if response.headers[REPLICA] == replica:
            lines = [line for line in response.text.splitlines()
                     if line.startswith(name + "{") and all(label in line for label in wanted)]
            return sum(float(line.split()[-1]) for line in lines)
    raise AssertionError(f"/metrics never answered from {replica}")


def test_a_client_that_leaves_aborts_its_request_on_its_replica(ray_server, client, model_id):
    aborted = {"name": "omnilive_requests_finished_total", "reason": "aborted"}
    # read before the request: while it streams, Ray routes every other request to the idle replica
    before = {replica: _replica_metric(ray_server, replica, **aborted) for replica in _replicas(ray_server)}
    raw = client.chat.completions.with_streaming_response.create(
        model=model_id, messages=[{"role": "user", "content": "Write a very long story about the sea."}],
        max_tokens=1500, stream=True)
    with raw as response:
        replica = response.headers[REPLICA]
        for received, _ in enumerate(response.iter_lines()):
            if received == 6:
                break
    # the request ended on its replica, aborted, well before 1500 tokens
    deadline = time.monotonic() + 20
    while _replica_metric(ray_server, replica, "omnilive_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _replica_metric(ray_server, replica, **aborted) == before[replica] + 1
    assert _replica_metric(ray_server, replica, "omnilive_requests_running") == 0


def test_a_realtime_session_stays_on_one_replica(ray_server):
    rt = Realtime(ray_server)
    try:
        created = rt.recv()
        assert created["type"] == "session.created" and created[REPLICA]
        rt.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}})
        rt.until("session.updated")
        usages = []
        for text in ("My favourite colour is green. Say OK.", "What is my favourite colour?"):
            rt.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": text}]}})
            rt.send({"type": "response.create", "response": {"max_output_tokens": 12, "temperature": 0}})
            done = rt.until("response.done")[-1]
            assert done["response"]["status"] in ("completed", "incomplete"), done["response"]  # not failed
            usages.append(done["response"]["usage"])
    finally:
        rt.close()
    # every event came from the replica that accepted the session...
    assert {event[REPLICA] for event in rt.events} == {created[REPLICA]}
    # ...which kept the conversation: the second turn's prompt holds the whole first turn
    first, second = usages
    assert second["input_tokens"] > first["input_tokens"] + first["output_tokens"]


def test_an_uploaded_file_is_read_by_every_replica(ray_server, client):
    """Replicas on one node share DATA_DIR/files; a history conversation lives in PostgreSQL."""
    uploaded = client.files.create(file=("note.txt", b"omnilive on ray", "text/plain"), purpose="user_data")
    conversation = httpx.post(f"{ray_server.url}/v1/history/conversations", headers=ray_server.auth_headers,
                              json={"title": "through ray"}).json()
    served = set()
    for _ in range(100):
        content = httpx.get(f"{ray_server.url}/v1/files/{uploaded.id}/content", headers=ray_server.auth_headers)
        assert content.status_code == 200 and content.content == b"omnilive on ray"
        history = httpx.get(f"{ray_server.url}/v1/history/conversations/{conversation['id']}",
                            headers=ray_server.auth_headers)
        assert history.status_code == 200 and history.json()["title"] == "through ray"
        served |= {content.headers[REPLICA], history.headers[REPLICA]}
        if len(served) == 2:
            break
    assert len(served) == 2, served


def _serve_on(cluster, data_dir, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess:
    """`omnilive serve --ray` joining `cluster`, run to its end (a refusal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "OMNILIVE_CACHE_DIR": default_cache_dir()}
    env.pop("OMNILIVE_DATABASE_URL", None)
    if database_url is not None:
        env["OMNILIVE_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "omnilive", "serve", *MODEL_ARGS, "--ray", "--ray-address", cluster.address,
               "--replicas", "2", "--data-dir", str(data_dir), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_sqlite_on_a_multi_node_cluster_is_refused(cluster, tmp_path):
    done = _serve_on(cluster, tmp_path, "--port", "0")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "2 nodes" in done.stderr and "SQLite" in done.stderr and "OMNILIVE_DATABASE_URL" in done.stderr


def test_a_second_server_on_another_port_is_refused_and_the_first_keeps_serving(
        ray_server, cluster, module_postgres_url, client, model_id, tmp_path):
    other_port = str(ray_server.port + 1)
    done = _serve_on(cluster, tmp_path, "--port", other_port, database_url=module_postgres_url)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"127.0.0.1:{ray_server.port}" in done.stderr and f"--port {ray_server.port}" in done.stderr
    assert _ask(client, model_id, "Say hello.")[0]  # nothing of the running server was touched


def test_a_killed_replica_fails_its_request_cleanly_and_is_replaced(ray_server, model_id):
    """Last: it changes the replicas."""
    body = {"model": model_id, "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
            "max_tokens": 1500, "stream": True}
    whole = {**body, "stream": False, "max_tokens": 150}
    url = f"{ray_server.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=ray_server.auth_headers, timeout=120) as response, \
            ThreadPoolExecutor(4) as pool:
        victim = response.headers[REPLICA]
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        # non-streaming requests in flight too, on new connections (so on either replica)
        waiting = [pool.submit(httpx.post, url, json=whole, headers=ray_server.auth_headers, timeout=120)
                   for _ in range(4)]
        time.sleep(1.0)
        os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):  # the body ends unfinished: an error, not a hang
            for line in lines:
                assert '"finish_reason":"' not in line  # it must not run to its end
        assert time.monotonic() - started < 30, "the stream hung after its replica died"
        # each either finished on the other replica or failed with a 5xx at once; none hangs
        for future in waiting:
            answer = future.result(timeout=90)
            assert answer.status_code == 200 or answer.status_code >= 500, answer.text
            if answer.status_code == 200:
                assert answer.json()["choices"][0]["message"]["content"]
            else:  # Ray's proxy answered for the dead replica: in OpenAI's shape too
                assert answer.json()["error"]["type"] == "server_error", answer.text

    # Ray replaces the replica; meanwhile the other answers, and nothing fails for long
    deadline, names = time.monotonic() + 180, set()
    while time.monotonic() < deadline and len(names - {victim}) < 2:
        with ThreadPoolExecutor(4) as pool:
            for answer in pool.map(lambda _: _ask_fresh(ray_server, model_id), range(8)):
                if answer is not None:  # None: routed to the dead replica before the proxy knew
                    assert answer[0]
                    names.add(answer[1])
        time.sleep(1)
    assert victim not in names and len(names) == 2, names


def _ask_fresh(server: ServerProcess, model: str) -> tuple[str, str] | None:
    """A greedy chat request on a new connection: (answer, replica), or None for a 5xx."""
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=server.auth_headers, timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "temperature": 0})
    if response.status_code >= 500:
        return None
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"], response.headers[REPLICA]
