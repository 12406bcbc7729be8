"""The Realtime API (WebSocket /v1/realtime) on the real server: voice turns, items, barge-in, errors.

Every event the server sends is validated against the official openai package's event types
(GA or beta, whichever the connection speaks). Speech is espeak-ng, sent as 20 ms PCM16 frames
(faster than real time: the VAD judges audio time, not wall time).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import typing

import numpy as np
import openai.types.beta.realtime
import openai.types.realtime
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from omnilive.server.realtime.turn import TurnTranscriber
from tests.metrics import metric, wait_until_idle
from tests.server.test_files import text_image
from tests.speech_helpers import espeak_wav, needs_speech_tools, wer, with_silence

RATE = 24_000
FRAME = RATE // 50  # 20 ms


def _event_models(union) -> dict[str, type]:
    """type name → the openai model of that server event."""
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


GA_EVENTS = _event_models(openai.types.realtime.RealtimeServerEvent)
BETA_EVENTS = _event_models(openai.types.beta.realtime.RealtimeServerEvent)


def check_event(event: dict, models: dict[str, type]) -> dict:
    """Validate a server event against the openai package's model of its type."""
    assert event["type"] in models, event["type"]
    models[event["type"]].model_validate(event)
    return event


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


class Realtime:
    """A raw WebSocket client that checks every server event against the openai types."""

    def __init__(self, server, beta: bool = False, subprotocol_key: bool = False):
        url = server.url.replace("http", "ws", 1) + "/v1/realtime" + ("?beta=1" if beta else "")
        if subprotocol_key:  # the browser way: no headers, the key in a subprotocol
            opening = connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{server.api_key}"], max_size=None)
        else:
            opening = connect(url, additional_headers=server.auth_headers, max_size=None)
        self.ws = opening.__enter__()
        self.models = BETA_EVENTS if beta else GA_EVENTS
        self.events: list[dict] = []

    def send(self, event: dict | str | bytes) -> None:
        self.ws.send(event if isinstance(event, (str, bytes)) else json.dumps(event))

    def recv(self, timeout: float = 60) -> dict:
        event = json.loads(self.ws.recv(timeout=timeout))
        check_event(event, self.models)  # the exact shape the openai client expects
        self.events.append(event)
        return event

    def until(self, kind: str, timeout: float = 120) -> list[dict]:
        """Events up to and including the first of type `kind`."""
        deadline, got = time.monotonic() + timeout, []
        while True:
            got.append(self.recv(max(0.1, deadline - time.monotonic())))
            if got[-1]["type"] == kind:
                return got

    def speak(self, samples24k: np.ndarray) -> None:
        data = pcm16(samples24k)
        for at in range(0, len(data), FRAME * 2):
            self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(data[at:at + FRAME * 2]).decode()})

    def close(self) -> None:
        self.ws.close()


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def in_order(events: list[dict], *kinds: str) -> bool:
    positions = [types(events).index(kind) for kind in kinds]
    return positions == sorted(positions)


def audio_of(events: list[dict], kind: str = "response.output_audio.delta") -> np.ndarray:
    data = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == kind)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767


@pytest.fixture
def rt(server):
    session = Realtime(server)
    assert session.recv()["type"] == "session.created"
    yield session
    session.close()


@needs_speech_tools
def test_spoken_question_gets_a_spoken_answer(rt, client):
    rt.send({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 60, "temperature": 0,
             "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                 "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}}})
    updated = rt.until("session.updated")[-1]["session"]
    assert updated["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 400

    # espeak's "capital of France" is often heard as "capital and friends", and the 0.5B model
    # then rambles past the token limit: a question Whisper hears right keeps the answer short
    question = "How many days are there in a week?"
    rt.speak(with_silence(espeak_wav(question, RATE), RATE, 0.6, 1.0))
    events = rt.until("response.done")

    assert in_order(events, "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                    "input_audio_buffer.committed", "conversation.item.added", "response.created",
                    "response.output_item.added", "response.content_part.added",
                    "response.output_audio_transcript.delta", "response.output_audio.delta",
                    "response.output_audio.done", "response.output_audio_transcript.done",
                    "response.content_part.done", "response.output_item.done", "response.done")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert 0 < started["audio_start_ms"] < 600 < stopped["audio_end_ms"] < 4000
    assert started["item_id"] == stopped["item_id"]
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert heard["item_id"] == started["item_id"] and wer(question, heard["transcript"]) <= 0.34

    done = events[-1]["response"]
    assert done["status"] == "completed" and done["usage"]["output_tokens"] > 0
    spoken = done["output"][0]["content"][0]
    assert spoken["type"] == "output_audio" and spoken["transcript"]
    answer = audio_of(events)
    assert len(answer) > RATE // 2 and 0.01 < np.sqrt(np.mean(answer**2)) < 0.5
    # the audio says what its transcript says: recognise it back
    wav = io.BytesIO()
    import soundfile as sf
    sf.write(wav, answer, RATE, format="WAV")
    back = client.audio.transcriptions.create(model="whisper-1", file=("answer.wav", wav.getvalue(), "audio/wav"))
    assert wer(spoken["transcript"], back.text) <= 0.5


@needs_speech_tools
def test_a_brief_pause_then_more_speech_answers_the_whole_turn(rt, http):
    """The first half's early transcript starts an answer that must be discarded unheard."""
    aborted = 'omnilive_requests_finished_total{reason="aborted"}'
    aborted_before = metric(http, aborted)
    first, rest = "How many days are there", "in a week?"
    spoken = espeak_wav(first, RATE)
    spoken = spoken[: np.nonzero(np.abs(spoken) > 0.01)[0][-1] + RATE // 20]  # espeak's own trailing ~350 ms off
    rt.send({"type": "session.update", "session": {"temperature": 0}})  # greedy: the answer is checked
    rt.until("session.updated")
    rt.speak(with_silence(spoken, RATE, 0.6, 0.25))  # a ~300 ms pause: under the 500 ms window
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and metric(http, "omnilive_requests_running") == 0:
        time.sleep(0.05)  # the pause's transcript is in and the answer to "How many days are there" began
    assert metric(http, "omnilive_requests_running") == 1
    time.sleep(1.0)  # long enough for that answer to have audio
    rt.speak(with_silence(espeak_wav(rest, RATE), RATE, 0.0, 1.0))
    events = rt.until("response.done")

    kinds = types(events)
    assert kinds.count("input_audio_buffer.speech_started") == kinds.count("input_audio_buffer.speech_stopped") == 1
    assert kinds.count("response.created") == 1
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert wer(f"{first} {rest}", heard["transcript"]) <= 0.25
    response_id = next(e for e in events if e["type"] == "response.created")["response"]["id"]
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert deltas and {e["response_id"] for e in deltas} == {response_id}
    assert in_order(events, "input_audio_buffer.committed", "response.created", "response.output_audio.delta")
    done = events[-1]["response"]
    answer = done["output"][0]["content"][0]["transcript"].lower()
    assert done["status"] == "completed" and ("7" in answer or "seven" in answer), answer
    assert metric(http, aborted) == aborted_before + 1  # the first answer, thrown away
    assert metric(http, "omnilive_requests_running") == 0


def test_the_transcriber_guesses_the_latest_pause_once_the_running_guess_ends():
    async def scenario():
        heard, reported = [], []

        async def transcribe(samples: np.ndarray) -> str:
            heard.append(len(samples))
            await asyncio.sleep(0.01)
            return f"{len(samples)} samples"

        transcriber = TurnTranscriber(transcribe, on_guess=lambda *guess: reported.append(guess))
        for end_ms, n in ((100, 1), (200, 2), (300, 3)):  # pauses at 200 and 300 ms come during the first run
            transcriber.guess(0, end_ms, np.zeros(n))
        await asyncio.sleep(0.1)
        assert heard == [1, 3] and reported == [(0, 100, "1 samples"), (0, 300, "3 samples")]
        final = transcriber.final(0, 300, np.zeros(3))
        assert final.done() and final.result() == "3 samples" and heard == [1, 3]  # the guess, reused

        transcriber.guess(1000, 1100, np.zeros(4))
        transcriber.guess(1000, 1200, np.zeros(5))
        transcriber.resumed()  # speech went on: the 1200 ms pause is stale before its run starts
        await asyncio.sleep(0.1)
        assert heard == [1, 3, 4] and reported[-1] == (1000, 1100, "4 samples")

    asyncio.run(scenario())


@needs_speech_tools
def test_push_to_talk_with_the_official_beta_client(server, model_id):
    from openai import OpenAI

    openai_client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key,
                           websocket_base_url=server.url.replace("http", "ws", 1) + "/v1")
    question = "How many legs does a spider have?"
    speech = pcm16(espeak_wav(question, RATE))
    with openai_client.beta.realtime.connect(model=model_id) as connection:
        def recv() -> dict:
            return check_event(json.loads(connection.recv_bytes()), BETA_EVENTS)

        assert recv()["type"] == "session.created"
        connection.session.update(session={"turn_detection": None, "modalities": ["text"],
                                           "input_audio_format": "pcm16", "max_response_output_tokens": 30})
        session = recv()
        assert session["type"] == "session.updated" and session["session"]["turn_detection"] is None
        connection.input_audio_buffer.append(audio=base64.b64encode(speech).decode())
        connection.input_audio_buffer.commit()
        connection.response.create()
        events = []
        while not events or events[-1]["type"] != "response.done":
            events.append(recv())
    kinds = types(events)
    assert "input_audio_buffer.speech_started" not in kinds  # no VAD: the client decides the turn
    assert in_order(events, "input_audio_buffer.committed", "conversation.item.created", "response.created",
                    "response.text.delta", "response.text.done", "response.done")
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert wer(question, heard["transcript"]) <= 0.34
    text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
    assert text and events[-1]["response"]["output"][0]["content"][0] == {"type": "text", "text": text.strip()}


def test_text_and_image_items_with_the_official_client(server, model_id):
    from openai import OpenAI

    openai_client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key,
                           websocket_base_url=server.url.replace("http", "ws", 1) + "/v1")
    image = "data:image/png;base64," + base64.b64encode(text_image("PLUM 3852")).decode()
    with openai_client.realtime.connect(model=model_id) as connection:
        assert connection.recv().type == "session.created"
        connection.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "instructions": "Answer in a few words."})
        assert connection.recv().type == "session.updated"
        connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is the capital of France?"}]})
        assert [connection.recv().type for _ in range(2)] == ["conversation.item.added", "conversation.item.done"]
        connection.response.create(response={"max_output_tokens": 20, "temperature": 0})
        first = _text_reply(connection)
        assert "paris" in first.lower()

        connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": image},
            {"type": "input_text", "text": "What text is written in this image? Reply with the text only."}]})
        connection.response.create(response={"max_output_tokens": 20, "temperature": 0})
        assert "3852" in _text_reply(connection)


def _text_reply(connection) -> str:
    text = ""
    while (event := connection.recv()).type != "response.done":
        if event.type == "response.output_text.delta":
            text += event.delta
    assert event.response.status == "completed", event.response.status_details
    return text


@needs_speech_tools
def test_barge_in_cancels_the_answer_at_once(rt):
    rt.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
        "type": "server_vad", "create_response": False, "interrupt_response": True}}}}})
    rt.until("session.updated")
    rt.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Tell me a long story about a dragon who loves tea."}]}})
    # greedy: a sampled "long story" was once over before the interruption was heard
    rt.send({"type": "response.create", "response": {"max_output_tokens": 300, "temperature": 0}})
    events = rt.until("response.output_audio.delta")
    assistant_id = events[-1]["item_id"]

    rt.speak(with_silence(espeak_wav("Stop, please.", RATE), RATE, 0.2, 0.0))
    events = rt.until("response.done")
    kinds = types(events)
    after_interrupt = kinds[kinds.index("input_audio_buffer.speech_started"):]
    assert "response.output_audio.delta" not in after_interrupt, kinds  # nothing more once the user speaks
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected", done
    sent = done["output"][0]["content"][0]["transcript"]

    # the client played only 300 ms of it: the item keeps just the words heard
    rt.send({"type": "conversation.item.truncate", "item_id": assistant_id, "content_index": 0, "audio_end_ms": 300})
    truncated = rt.until("conversation.item.truncated")[-1]
    assert truncated["audio_end_ms"] == 300
    rt.send({"type": "conversation.item.retrieve", "item_id": assistant_id})
    kept = rt.until("conversation.item.retrieved")[-1]["item"]["content"][0]["transcript"]
    assert len(kept.split()) < len(sent.split()), (kept, sent)


def test_malformed_events_get_errors_and_the_session_goes_on(rt, server):
    bad = [
        ("{not json", None, "invalid_json"),
        (json.dumps({"type": "no.such.event", "event_id": "e1"}), "e1", "unknown_event_type"),
        (json.dumps({"type": "input_audio_buffer.append", "event_id": "e2", "audio": 12}), "e2", "invalid_value"),
        (json.dumps({"type": "input_audio_buffer.append", "event_id": "e3", "audio": "&&&not base64"}), "e3",
         "invalid_base64"),
        (json.dumps({"type": "session.update", "event_id": "e4", "session": {"turn_detection": {"threshold": 7}}}),
         "e4", "invalid_value"),
        (json.dumps({"type": "response.cancel", "event_id": "e5"}), "e5", "response_cancel_not_active"),
        (json.dumps({"type": "input_audio_buffer.commit", "event_id": "e6"}), "e6", "input_audio_buffer_commit_empty"),
        (json.dumps({"type": "conversation.item.delete", "event_id": "e7", "item_id": "nope"}), "e7", "item_not_found"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (server.max_body_bytes + 1)}), None,
         "event_too_large"),
    ]
    for raw, event_id, code in bad:
        rt.send(raw)
        error = rt.recv()
        assert error["type"] == "error", raw[:60]
        assert (error["error"]["type"], error["error"]["code"], error["error"]["event_id"]) == (
            "invalid_request_error", code, event_id)
    rt.send({"type": "session.update", "session": {"instructions": "still here"}})
    assert rt.recv()["session"]["instructions"] == "still here"


def test_a_browser_style_key_and_a_wrong_key(server):
    browser = Realtime(server, subprotocol_key=True)
    assert browser.recv()["type"] == "session.created"
    browser.close()
    assert browser.ws.subprotocol == "realtime"
    with pytest.raises(InvalidStatus, match="403"):
        connect(server.url.replace("http", "ws", 1) + "/v1/realtime", additional_headers={"Authorization": "Bearer no"})


def test_disconnect_leaves_no_work_running(server, http):
    aborted_before = metric(http, 'omnilive_requests_finished_total{reason="aborted"}')
    session = Realtime(server)
    session.recv()
    session.send({"type": "session.update", "session": {"output_modalities": ["text"]}})
    session.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Write a very long story about the sea."}]}})
    session.send({"type": "response.create", "response": {"max_output_tokens": 1000}})
    session.until("response.output_text.delta")
    session.close()

    assert wait_until_idle(http, timeout_s=10) == 0
    assert metric(http, 'omnilive_requests_finished_total{reason="aborted"}') == aborted_before + 1
    outputs = metric(http, "omnilive_engine_outputs_total")
    time.sleep(1.0)
    assert metric(http, "omnilive_engine_outputs_total") == outputs
