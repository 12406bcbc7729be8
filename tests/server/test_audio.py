"""Speech in and out over HTTP: transcriptions, speech, and chat with audio input and output.

Input speech is made with espeak-ng; output speech is checked by transcribing it back.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile

from omnilive.media.decode import decode_audio
from tests.speech_helpers import espeak_wav, needs_speech_tools, wer

pytestmark = needs_speech_tools


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def question_wav() -> bytes:
    return wav_bytes(espeak_wav("What is the capital of France?", 16_000), 16_000)


def test_transcription_formats(client, http, question_wav):
    transcript = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", question_wav, "audio/wav"))
    assert wer("What is the capital of France?", transcript.text) < 0.3

    verbose = http.post("/v1/audio/transcriptions", files={"file": ("q.wav", question_wav, "audio/wav")},
                        data={"model": "whisper-1", "response_format": "verbose_json", "language": "en"}).json()
    assert verbose["task"] == "transcribe" and 1.0 < verbose["duration"] < 5.0
    assert verbose["segments"] and verbose["segments"][-1]["end"] <= verbose["duration"] + 0.5

    srt = http.post("/v1/audio/transcriptions", files={"file": ("q.wav", question_wav)},
                    data={"model": "whisper-1", "response_format": "srt"})
    assert srt.text.startswith("1\n00:00:0") and " --> " in srt.text
    vtt = http.post("/v1/audio/transcriptions", files={"file": ("q.wav", question_wav)},
                    data={"model": "whisper-1", "response_format": "vtt"})
    assert vtt.text.startswith("WEBVTT\n\n") and vtt.headers["content-type"].startswith("text/vtt")
    text = http.post("/v1/audio/transcriptions", files={"file": ("q.wav", question_wav)},
                     data={"model": "whisper-1", "response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain") and "France" in text.text


def test_transcription_of_garbage_is_400(http):
    response = http.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"not audio at all")},
                         data={"model": "whisper-1"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


@pytest.mark.parametrize("response_format, content_type", [
    ("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("pcm", "audio/pcm"), ("flac", "audio/flac"),
    ("opus", "audio/ogg"), ("aac", "audio/aac"),
])
def test_speech_formats_decode(http, response_format, content_type):
    response = http.post("/v1/audio/speech", json={
        "model": "tts-1", "input": "The quick brown fox jumps over the lazy dog.", "voice": "alloy",
        "response_format": response_format,
    })
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type)
    audio = decode_audio(response.content, format_hint="pcm16" if response_format == "pcm" else None)
    assert 1.0 < audio.duration_s < 8.0


def test_speech_round_trip_through_asr(client):
    sentence = "Hello there. The weather is sunny today."
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=sentence, response_format="wav"
    ) as response:
        audio = b"".join(response.iter_bytes())
    transcript = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", audio, "audio/wav"))
    assert wer(sentence, transcript.text) < 0.25


def test_speech_input_limit(http):
    response = http.post("/v1/audio/speech", json={"model": "tts-1", "input": "a" * 5000, "voice": "alloy"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"


@pytest.mark.slow
def test_chat_with_audio_question(client, model_id, question_wav):
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(question_wav).decode(), "format": "wav"}},
    ]}]
    answer = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=40)
    assert "paris" in answer.choices[0].message.content.lower()


@pytest.mark.slow
def test_chat_audio_out_whole_and_streamed(client, model_id):
    messages = [{"role": "user", "content": "Say: the cat sat on the mat."}]
    whole = client.chat.completions.create(
        model=model_id, messages=messages, temperature=0, max_tokens=30,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
    )
    audio = whole.choices[0].message.audio
    wav = base64.b64decode(audio.data)
    assert audio.id.startswith("audio_") and audio.transcript.strip()
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == 24_000 and len(samples) > rate // 2
    heard = client.audio.transcriptions.create(model="whisper-1", file=("out.wav", wav, "audio/wav")).text
    assert wer(audio.transcript, heard) < 0.35

    chunks = list(client.chat.completions.create(
        model=model_id, messages=messages, temperature=0, max_tokens=30, stream=True,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
    ))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    audio_deltas = [d.audio for d in deltas if getattr(d, "audio", None)]
    pcm = b"".join(base64.b64decode(d.data) for d in audio_deltas)
    assert len(pcm) // 2 == len(samples)  # the same speech, streamed as PCM16
    assert "".join(d.transcript for d in audio_deltas) == audio.transcript
    assert {d.id for d in audio_deltas} == {audio_deltas[0].id}


def test_arguments_the_server_cannot_honour_are_400s(client, question_wav):
    import openai

    def transcribe(**extra):
        return client.audio.transcriptions.create(model="whisper-1", file=("q.wav", question_wav, "audio/wav"),
                                                  **extra)

    for extra, param in (({"timestamp_granularities": ["word"]}, "timestamp_granularities[]"),
                         ({"temperature": 0.4}, "temperature"),
                         ({"extra_body": {"chunking_strategy": "auto"}}, "chunking_strategy")):
        with pytest.raises(openai.BadRequestError) as error:
            transcribe(**extra)
        assert error.value.body["param"] == param
    assert transcribe(response_format="verbose_json", timestamp_granularities=["segment"]).segments
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.speech.create(model="tts-1", input="Hello.", voice="alloy", instructions="Whisper it.")
    assert error.value.body["param"] == "instructions"
