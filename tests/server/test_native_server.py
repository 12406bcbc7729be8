"""`omnilive serve --model DIR` on a tiny random Qwen2.5-Omni checkpoint, through the OpenAI client.

A real server subprocess serves the native engine; requests carry an image, an audio clip and a
video with its own audio track. Random weights answer gibberish, so the checks are about
structure: text comes back, speech comes back as a 24 kHz wav, usage counts the media, and
concurrent requests (batched by the engine) each get what they would get alone.
"""

from __future__ import annotations

import base64
import io
import threading
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.server_process import ServerProcess
from tests.model.omni_tiny import build_tiny_omni
from tests.server.test_media_chat import data_url, text_video

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # building the checkpoint and starting a server: ~15 s

API_KEY = "native-test-key"


@pytest.fixture(scope="module")
def native_server(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("tiny-omni")
    build_tiny_omni(checkpoint, seed=2)
    with ServerProcess.of_checkpoint(checkpoint, tmp_path_factory.mktemp("native-data"), API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def client(native_server):
    with native_server.openai_client() as openai_client:
        yield openai_client


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def media_message() -> list[dict]:
    beep = 0.2 * np.sin(2 * np.pi * 330 * np.arange(16_000) / 16_000)
    return [{"role": "user", "content": [
        {"type": "text", "text": "What do you see and hear?"},
        {"type": "image_url", "image_url": {"url": data_url("image/png", png_bytes())}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(beep, 16_000)).decode(),
                                                "format": "wav"}},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", text_video("OMNI", seconds=2.0))}},
    ]}]


def test_model_card_names_the_checkpoint(client):
    (model,) = client.models.list().data
    assert model.id.startswith("tiny-omni")


def test_text_reply_with_image_audio_and_video(client):
    model = client.models.list().data[0].id
    response = client.chat.completions.create(model=model, messages=media_message(), temperature=0, max_tokens=12)
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 12
    details = response.usage.prompt_tokens_details
    # the image and the video's frames, the audio clip and the video's track all reach the thinker
    assert response.usage.prompt_tokens > 60
    assert details is None or details.audio_tokens is None or details.audio_tokens >= 2 * 25


def test_text_and_speech_reply(client):
    model = client.models.list().data[0].id
    response = client.chat.completions.create(
        model=model, messages=media_message(), modalities=["text", "audio"], audio={"voice": "Ethan", "format": "wav"},
        max_tokens=10, seed=3,
    )
    audio = response.choices[0].message.audio
    assert audio is not None and audio.transcript
    with wave.open(io.BytesIO(base64.b64decode(audio.data))) as speech:
        assert speech.getframerate() == 24_000 and speech.getnchannels() == 1
        assert speech.getnframes() > 0


def test_unknown_voice_is_a_400(client):
    import openai

    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                       modalities=["text", "audio"], audio={"voice": "nobody", "format": "wav"})


def stream_chat(client, model: str, question: str, voice: str | None, max_tokens: int) -> dict:
    """One streaming request read to its end: its text, 24 kHz PCM16 speech, transcript, finish, usage."""
    extra = {"modalities": ["text", "audio"], "audio": {"voice": voice, "format": "pcm16"}} if voice else {}
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0.8, seed=5, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True}, **extra,
    )
    reply = {"text": "", "pcm": b"", "transcript": "", "finish": None, "usage": None}
    with stream:
        for chunk in stream:
            reply["usage"] = chunk.usage or reply["usage"]
            for choice in chunk.choices:
                reply["text"] += choice.delta.content or ""
                reply["finish"] = choice.finish_reason or reply["finish"]
                if choice.delta.audio:
                    reply["pcm"] += base64.b64decode(choice.delta.audio.data)
                    reply["transcript"] += choice.delta.audio.transcript or ""
    return reply


def test_four_concurrent_streams_two_spoken_equal_each_alone(client):
    model = client.models.list().data[0].id
    asks = [("Tell me a long story about the sea.", None, 16), ("Say something kind.", "Chelsie", 12),
            ("What is the weather like?", None, 8), ("Describe a small boat.", "Ethan", 10)]
    alone = [stream_chat(client, model, *ask) for ask in asks]
    barrier = threading.Barrier(len(asks))

    def together(ask):
        barrier.wait()  # all four arrive at once: the engine steps them in one batch (max_batch 4)
        return stream_chat(client, model, *ask)

    with ThreadPoolExecutor(len(asks)) as pool:
        replies = list(pool.map(together, asks))
    for (question, voice, max_tokens), reply, single in zip(asks, replies, alone):
        assert reply["finish"] in ("stop", "length") and reply["text"]
        assert reply["usage"].completion_tokens <= max_tokens
        assert reply["text"] == single["text"] and reply["usage"].completion_tokens == single["usage"].completion_tokens
        if voice:
            assert len(reply["pcm"]) > 0 and len(reply["pcm"]) == len(single["pcm"])
            assert reply["transcript"] == reply["text"]
            difference = np.abs(np.frombuffer(reply["pcm"], "<i2").astype(int) - np.frombuffer(single["pcm"], "<i2"))
            assert difference.max() <= 4  # the same speech, up to PCM16 rounding of float noise
        else:
            assert reply["pcm"] == b""


def test_the_next_turn_of_a_voice_chat_reuses_the_first_turns_prompt(client):
    """Spoken replies, two turns: the second reports its cached prompt tokens (OpenAI's
    usage.prompt_tokens_details.cached_tokens) and speaks as it does when asked cold."""
    model = client.models.list().data[0].id
    spoken = {"modalities": ["text", "audio"], "audio": {"voice": "Chelsie", "format": "wav"}, "max_tokens": 8,
              "temperature": 0.0, "seed": 11}
    first_turn = [{"role": "user", "content": [{"type": "text", "text": "Tell me about the sea and the wind."},
                                               {"type": "image_url", "image_url": {"url": data_url("image/png",
                                                                                                   png_bytes())}}]}]
    first = client.chat.completions.create(model=model, messages=first_turn, **spoken)
    # (other tests on this server spoke with the same system prompt: its blocks may be cached)
    second_turn = [*first_turn, {"role": "assistant", "content": first.choices[0].message.audio.transcript},
                   {"role": "user", "content": "And the boats?"}]
    second = client.chat.completions.create(model=model, messages=second_turn, **spoken)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert max(first.usage.prompt_tokens_details.cached_tokens, first.usage.prompt_tokens // 2) < cached
    assert cached < second.usage.prompt_tokens
    again = client.chat.completions.create(model=model, messages=second_turn, **spoken)  # cached once more
    assert again.usage.prompt_tokens_details.cached_tokens >= cached
    assert again.choices[0].message.audio.transcript == second.choices[0].message.audio.transcript
    speech = [np.frombuffer(wave.open(io.BytesIO(base64.b64decode(r.choices[0].message.audio.data))).readframes(10**7),
                            "<i2").astype(int) for r in (second, again)]
    assert speech[0].shape == speech[1].shape and np.abs(speech[0] - speech[1]).max() <= 4  # float rounding only
