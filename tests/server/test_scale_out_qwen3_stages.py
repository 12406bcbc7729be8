"""`omnilive serve --ray --stages thinker=1,speech=1` with a tiny random Qwen3-Omni checkpoint, on a
Ray cluster the test starts (one node): the thinker replica takes HTTP and streams, while it
writes, each spoken reply's prompt states (thinker layer `accept_hidden_layer`) and reply
embeddings to the speech deployment, where the talker, code predictor and Code2Wav run.

What a client gets must equal the single-process server's (greedy text, seeded speech): text,
the wav, the transcript, usage, and the streamed PCM; for a question with audio too, whose
reply's talker reads the thinker's states of that audio.

Last, the speech replica's process is killed with SIGKILL while it speaks a streamed reply and
a realtime response: the stream ends at once with an error event in OpenAI's shape (no
finish, no hang), the realtime response with response.done `failed`, and a non-streamed
spoken reply in flight fails with a 503 (or, routed to the new replica, is whole); the
thinker replica serves on; once Ray Serve has started a new speech replica, spoken replies
succeed again, in the same realtime session too.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.model.qwen3_omni_tiny import build_tiny_qwen3_omni
from tests.server.test_native_server import wav_bytes
from tests.server.test_realtime import Realtime
from tests.server.test_scale_out_stages import (  # noqa: F401 - cluster and model_args are fixtures
    QUESTIONS,
    REPLICA,
    SPOKEN,
    _client,
    _replies,
    cluster,
    model_args,
)
from tests.server_process import ServerProcess

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

SPEECH_DEPLOYMENT = "omnilive-speech"
# greedy, this prompt's reply runs to max_tokens on the tiny checkpoint (seed 6): the speech call
# stays open, fed, for the whole reply (seconds), long after its first audio
LONG_REPLY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1500, "temperature": 0, "seed": 3,
              "modalities": ["text", "audio"], "audio": {"voice": "Ethan", "format": "pcm16"}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-qwen3-omni")
    build_tiny_qwen3_omni(directory, seed=6, with_tokenizer=True)
    return directory


def _replies_with_audio(server: ServerProcess) -> dict:
    """_replies, and the whole spoken reply (text, wav, transcript, usage) to a question with audio."""
    tone = wav_bytes(0.3 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000), 16_000)
    content = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(tone).decode(), "format": "wav"}},
               {"type": "text", "text": "What do you hear?"}]
    with _client(server) as client:
        whole = client.chat.completions.create(model=client.models.list().data[0].id,
                                               messages=[{"role": "user", "content": content}],
                                               audio={"voice": "Ethan", "format": "wav"}, **SPOKEN)
    message = whole.choices[0].message
    heard = (message.content, message.audio.data, message.audio.transcript, whole.usage.model_dump())
    return {**_replies(server), "audio": heard}


@pytest.fixture(scope="module")
def single_process_replies(model_args, tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("single"), args=model_args) as single:
        return _replies_with_audio(single)


@pytest.fixture(scope="module")
def staged_server(single_process_replies, cluster, model_args, tmp_path_factory):
    args = [*model_args, "--ray", "--ray-address", cluster.address, "--stages", "thinker=1,speech=1"]
    with ServerProcess(tmp_path_factory.mktemp("staged"), args=args) as server:
        yield server


def test_spoken_replies_equal_the_single_process_server(staged_server, single_process_replies):
    staged = _replies_with_audio(staged_server)
    for question in QUESTIONS:
        (text, wav, transcript, usage), (_, pcm, _) = single_process_replies[question]
        assert text and wav and pcm and transcript == text  # the reply was spoken, not only written
        assert staged[question] == single_process_replies[question]
    text, wav, transcript, usage = single_process_replies["audio"]
    assert text and wav and transcript == text and usage["prompt_tokens_details"]["audio_tokens"] > 0
    assert staged["audio"] == single_process_replies["audio"]


def speech_replica_pids(cluster) -> set[int]:
    """The process ids of the live speech replicas, asked of each replica actor itself."""
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                 if actor["namespace"] == "serve" and f"#{SPEECH_DEPLOYMENT}#" in actor["name"]]
        pids = set()
        for name in names:
            try:
                replica = ray.get_actor(name, namespace="serve")
                pids.add(ray.get(replica.__ray_call__.remote(lambda _replica: os.getpid()), timeout=30))
            except (ray.exceptions.RayActorError, ValueError):  # gone since it was listed
                pass
        return pids
    finally:
        ray.shutdown()


def _events(lines) -> list[dict]:
    return [json.loads(line[len("data:"):]) for line in lines
            if line.startswith("data:") and line.strip() != "data: [DONE]"]


def _spoken(server: ServerProcess, model: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 16, "temperature": 0,
        "seed": 3, "modalities": ["text", "audio"], "audio": {"voice": "Ethan", "format": "wav"}})


def _realtime_speaking(server: ServerProcess) -> Realtime:
    """A realtime session whose long spoken response has begun to sound."""
    rt = Realtime(server)
    assert rt.recv()["type"] == "session.created"
    rt.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"]}})
    rt.until("session.updated")
    rt.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Hi"}]}})
    rt.send({"type": "response.create", "response": {"max_output_tokens": LONG_REPLY["max_tokens"], "temperature": 0}})
    rt.until("response.output_audio.delta")
    return rt


def test_a_killed_speech_replica_fails_its_replies_cleanly_and_is_replaced(staged_server, cluster):
    """Last: it changes the replicas."""
    (victim,) = speech_replica_pids(cluster)
    model = httpx.get(f"{staged_server.url}/v1/models").json()["data"][0]["id"]
    url = f"{staged_server.url}/v1/chat/completions"
    rt = _realtime_speaking(staged_server)
    try:
        with ThreadPoolExecutor(1) as pool, \
                httpx.stream("POST", url, json={"model": model, "stream": True, **LONG_REPLY}, timeout=120) as response:
            whole_body = {"model": model, **LONG_REPLY, "audio": {"voice": "Ethan", "format": "wav"}}
            whole = pool.submit(httpx.post, url, json=whole_body, timeout=120)  # in flight too, not streamed
            assert response.status_code == 200
            thinker = response.headers[REPLICA]
            lines = response.iter_lines()
            for line in lines:  # until the first audio: the speech replica is speaking this reply
                if line.startswith("data:") and '"audio":{' in line:
                    break
            os.kill(victim, signal.SIGKILL)
            started = time.monotonic()
            rest = _events(lines)
            assert time.monotonic() - started < 30, "the stream hung after the speech replica died"
            done = rt.until("response.done", timeout=30)[-1]["response"]
            answer = whole.result(timeout=120)
        assert not any(event.get("choices") and event["choices"][0].get("finish_reason") for event in rest), rest[-3:]
        error = rest[-1]["error"]
        assert (error["type"], error["code"]) == ("server_error", "speech_stage_unavailable"), rest[-1]
        assert done["status"] == "failed", done
        assert done["status_details"]["error"]["code"] == "speech_stage_unavailable", done
        if answer.status_code == 200:  # it reached the speech deployment after the new replica started
            assert answer.json()["choices"][0]["message"]["audio"]["transcript"]
        else:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "speech_stage_unavailable", answer.text

        # the thinker replica serves on (the same one: it did not die with the speech)
        written = httpx.post(url, timeout=120, json={"model": model, "max_tokens": 4, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "Hi"}]})
        assert written.status_code == 200 and written.headers[REPLICA] == thinker, written.text
        assert written.json()["choices"][0]["message"]["content"]

        # Ray Serve replaces the speech replica; a spoken reply then comes back whole
        deadline, answer = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            answer = _spoken(staged_server, model)
            if answer.status_code == 200:
                break
            assert answer.status_code >= 500 and answer.json()["error"]["type"] == "server_error", answer.text
            time.sleep(1)
        assert answer is not None and answer.status_code == 200, answer.text
        message = answer.json()["choices"][0]["message"]
        assert message["audio"]["data"] and message["audio"]["transcript"] == message["content"]
        assert victim not in speech_replica_pids(cluster)

        # and the realtime session outlived its failed response: it speaks again
        rt.send({"type": "response.create", "response": {"max_output_tokens": 12, "temperature": 0}})
        events = rt.until("response.done")
        assert events[-1]["response"]["status"] in ("completed", "incomplete"), events[-1]
        assert any(event["type"] == "response.output_audio.delta" for event in events)
    finally:
        rt.close()
