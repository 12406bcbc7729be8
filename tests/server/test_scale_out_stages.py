"""`omnilive serve --ray --stages thinker=1,speech=1` on a Ray cluster the test starts (one node):
a tiny random Qwen2.5-Omni checkpoint whose thinker replica takes HTTP and whose talker and
token2wav run in a separate speech deployment, fed hidden states through Ray while the reply
is written.

What a client gets must equal the single-process server's (greedy, seeded): text, the wav, the
transcript, usage, and the streamed PCM. The same server also shows the rest of issue 15:
autoscaling settings reach Ray Serve's deployment config, /metrics labels every sample with
the replica, and Ray's own errors come back in OpenAI's error shape; a realtime session speaks
through the speech deployment too.
"""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
from openai import OpenAI

from tests.model.omni_tiny import build_tiny_omni
from tests.server_process import ServerProcess

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

REPLICA = "x-omnilive-replica"
QUESTIONS = ["Hello there, who are you?", "Tell me about the sea."]
SPOKEN = {"modalities": ["text", "audio"], "max_tokens": 16, "temperature": 0, "seed": 3}


def _client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=180)


def _replies(server: ServerProcess) -> dict[str, tuple]:
    """Each question's (text, wav bytes, transcript, usage) and streamed (text, pcm, transcript)."""
    with _client(server) as client:
        model = client.models.list().data[0].id
        replies = {}
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            whole = client.chat.completions.create(model=model, messages=messages, audio={"voice": "Ethan",
                                                                                          "format": "wav"}, **SPOKEN)
            message = whole.choices[0].message
            stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                                    audio={"voice": "Ethan", "format": "pcm16"}, **SPOKEN)
            text, pcm, transcript = "", b"", ""
            for chunk in stream:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is not None:
                    text += delta.content or ""
                    if getattr(delta, "audio", None):
                        pcm += base64.b64decode(delta.audio.data or "")
                        transcript += delta.audio.transcript or ""
            replies[question] = ((message.content, message.audio.data, message.audio.transcript,
                                  whole.usage.model_dump()), (text, pcm, transcript))
        return replies


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-omni")
    build_tiny_omni(directory, seed=2)
    return directory


@pytest.fixture(scope="module")
def model_args(checkpoint) -> list[str]:
    return ["--model", str(checkpoint), "--dtype", "float32", "--threads", "1"]


@pytest.fixture(scope="module")
def single_process_replies(model_args, tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("single"), args=model_args) as single:
        return _replies(single)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    started = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 80 * 1024**2, "include_dashboard": False})
    yield started
    started.shutdown()


@pytest.fixture(scope="module")
def staged_server(single_process_replies, cluster, model_args, tmp_path_factory):
    args = [*model_args, "--ray", "--ray-address", cluster.address, "--stages", "thinker=1,speech=1",
            "--max-replicas", "2", "--target-ongoing-requests", "3"]
    with ServerProcess(tmp_path_factory.mktemp("staged"), args=args) as server:
        yield server


def test_spoken_replies_equal_the_single_process_server(staged_server, single_process_replies):
    staged = _replies(staged_server)
    for question in QUESTIONS:
        (text, wav, transcript, usage), streamed = single_process_replies[question]
        assert text and len(wav) > 1000 and transcript == text  # the reply was spoken, not only written
        assert staged[question][0] == (text, wav, transcript, usage)
        assert staged[question][1] == streamed


def test_autoscaling_and_stage_replicas_reach_ray_serve(staged_server, cluster):
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        application = serve.status().applications["omnilive"]
        running = {name: deployment.replica_states.get("RUNNING", 0)
                   for name, deployment in application.deployments.items()}
        assert running == {"omnilive": 1, "omnilive-speech": 1}
        details = _get_global_client().get_serve_details()["applications"]["omnilive"]["deployments"]
        autoscaling = details["omnilive"]["deployment_config"]["autoscaling_config"]
        assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 2)
        assert autoscaling["target_ongoing_requests"] == 3
        speech = details["omnilive-speech"]["deployment_config"]
        assert speech["num_replicas"] == 1 and not speech.get("autoscaling_config")
    finally:
        ray.shutdown()


def test_metrics_name_their_replica_on_every_sample(staged_server):
    response = httpx.get(staged_server.url + "/metrics")
    samples = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    label = f'replica="{response.headers[REPLICA]}"'
    assert samples and all(label in line for line in samples), samples[:3]


def test_rays_own_errors_come_in_openais_shape(staged_server):
    with _client(staged_server) as client, pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(  # Ray's proxy gives up on it after 1 ms: its 408, not the replica's
            model=client.models.list().data[0].id, messages=[{"role": "user", "content": "Tell me a long story."}],
            max_tokens=200, extra_headers={"x-request-timeout-seconds": "0.001"})
    assert raised.value.status_code == 408
    error = raised.value.body
    assert error["code"] == "ray_serve_408" and "timed out" in error["message"], error
    assert REPLICA not in raised.value.response.headers
    assert client_still_answers(staged_server)


def client_still_answers(server: ServerProcess) -> bool:
    with _client(server) as client:
        reply = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=4, temperature=0,
                                               messages=[{"role": "user", "content": "Hi"}])
    return bool(reply.choices[0].message.content)


def test_a_realtime_session_speaks_through_the_speech_deployment(staged_server):
    from tests.server.test_realtime import Realtime

    rt = Realtime(staged_server)
    try:
        assert rt.recv()["type"] == "session.created"
        rt.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"]}})
        rt.until("session.updated")
        rt.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Hello there, who are you?"}]}})
        rt.send({"type": "response.create", "response": {"max_output_tokens": 12, "temperature": 0}})
        events = rt.until("response.done")
    finally:
        rt.close()
    audio = [base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"]
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert events[-1]["response"]["status"] in ("completed", "incomplete"), events[-1]
    # realtime has no seed, so the talker samples freely and the audio's length varies: it came
    # back, with the reply's transcript
    assert audio and all(audio) and transcript
