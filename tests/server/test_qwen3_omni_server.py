"""`omnilive serve --model DIR` on a tiny random Qwen3-Omni checkpoint (thinker, talker,
Code2Wav), through the OpenAI client.

A real server subprocess; a request carries an image, an audio clip and a video with its own
audio track (merged with its frames by time). The greedy reply equals transformers' thinker
generate on the same prompt: the ids and encoder inputs our processor builds from the same
decoded media, fed to transformers' Qwen3OmniMoeThinkerForConditionalGeneration (its own
encoders, positions and decoder). Speech: chat completions with modalities ["text", "audio"]
stream `delta.audio` (the same speech as the non-streamed reply's wav), and a Realtime session
answers a text item with `response.output_audio.delta`.
"""

from __future__ import annotations

import base64
import io
import wave

import numpy as np
import pytest
import torch

from omnilive.backends.native_omni import load_omni
from omnilive.media.decode import decode_audio, decode_image, decode_video
from omnilive.types import Message
from tests.model.qwen3_omni_tiny import build_tiny_qwen3_omni
from tests.server.test_media_chat import data_url, text_video
from tests.server.test_native_server import png_bytes, stream_chat, wav_bytes
from tests.server.test_realtime import Realtime, audio_of, in_order
from tests.server_process import ServerProcess

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # building the checkpoint and starting a server: ~15 s

API_KEY = "qwen3-omni-test-key"
MAX_TOKENS = 12
QUESTION = "What do you see and hear?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_omni(tmp_path_factory.mktemp("tiny-qwen3-omni"), seed=6, with_tokenizer=True)


@pytest.fixture(scope="module")
def running(tiny, tmp_path_factory):
    with ServerProcess.of_checkpoint(tiny.directory, tmp_path_factory.mktemp("qwen3-omni-data"), API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def client(running):
    with running.openai_client() as openai_client:
        yield openai_client


def media_bytes() -> dict[str, bytes]:
    beep = 0.2 * np.sin(2 * np.pi * 330 * np.arange(16_000) / 16_000)
    return {"image": png_bytes(), "audio": wav_bytes(beep, 16_000), "video": text_video("OMNI", seconds=2.0)}


def chat_content(media: dict[str, bytes]) -> list[dict]:
    return [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": data_url("image/png", media["image"])}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(media["audio"]).decode(), "format": "wav"}},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", media["video"])}},
    ]


def reference_reply(tiny, media: dict[str, bytes]) -> tuple[list[int], int, object]:
    """transformers' thinker, greedy, on the prompt our processor builds: (reply ids, prompt length, tokenizer)."""
    ours = load_omni(tiny.directory, "float32")
    message = Message("user", (QUESTION, decode_image(media["image"]), decode_audio(media["audio"]),
                               decode_video(media["video"])))
    prompt = ours.processor.build([message])
    m = prompt.media
    assert m.images is not None and m.videos is not None and len(m.audio_frames) == 2  # clip + the video's track
    frames = m.audio_frames.tolist()
    mels = m.audio_mel.split(frames, dim=1)
    longest = max(frames)
    inputs = {
        "input_ids": torch.tensor([prompt.input_ids]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long),
        "pixel_values": m.images.pixel_values, "image_grid_thw": m.images.grid_thw,
        "pixel_values_videos": m.videos.pixel_values, "video_grid_thw": m.videos.grid_thw,
        "video_second_per_grid": torch.tensor(m.video_seconds_per_grid),
        "input_features": torch.stack([torch.nn.functional.pad(x, (0, longest - x.shape[1])) for x in mels]),
        "feature_attention_mask": (torch.arange(longest)[None] < torch.tensor(frames)[:, None]).long(),
        "use_audio_in_video": True,
    }
    tiny.thinker.model.rope_deltas = None
    stops = sorted(ours.tokenizer.stop_token_ids)
    with torch.no_grad():
        generated = tiny.thinker.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS, eos_token_id=stops)
    return generated[0, len(prompt):].tolist(), len(prompt), ours.tokenizer


def test_model_card_offers_speech_in_the_checkpoints_voices(client, tiny):
    (model,) = client.models.list().data
    assert model.id == tiny.directory.name and model.owned_by == "omnilive"
    card = model.model_dump()
    assert card["voices"] == ["Chelsie", "Ethan"] and card["default_voice"] == "Chelsie"


def test_greedy_reply_with_image_audio_and_video_equals_transformers_thinker(client, tiny):
    media = media_bytes()
    expected, prompt_tokens, tokenizer = reference_reply(tiny, media)
    shown = [t for t in expected if t not in tokenizer.stop_token_ids]
    assert len(set(shown)) > 2  # a varied reply, not one token repeated
    model = client.models.list().data[0].id
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": chat_content(media)}],
                                              temperature=0, max_tokens=MAX_TOKENS)
    assert response.choices[0].message.content == tokenizer.decode(shown, skip_special_tokens=True)
    assert response.usage.completion_tokens == len(expected)
    assert response.usage.prompt_tokens == prompt_tokens


def test_streamed_speech_equals_the_whole_reply(client):
    model = client.models.list().data[0].id
    streamed = stream_chat(client, model, "Say something kind.", "chelsie", MAX_TOKENS)
    assert streamed["finish"] in ("stop", "length") and streamed["text"]
    assert len(streamed["pcm"]) >= 2 * 16 and streamed["transcript"] == streamed["text"]  # 2 frames or more
    whole = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say something kind."}], temperature=0.8, seed=5,
        max_tokens=MAX_TOKENS, modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "wav"})
    audio = whole.choices[0].message.audio
    assert audio.transcript == streamed["text"]
    with wave.open(io.BytesIO(base64.b64decode(audio.data))) as speech:
        assert speech.getframerate() == 24_000 and speech.getnchannels() == 1
        samples = np.frombuffer(speech.readframes(speech.getnframes()), "<i2").astype(int)
    heard = np.frombuffer(streamed["pcm"], "<i2").astype(int)
    assert samples.shape == heard.shape and np.abs(samples - heard).max() <= 4  # PCM16 rounding of float noise


def test_unknown_voice_is_a_400(client):
    import openai

    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                       modalities=["text", "audio"], audio={"voice": "nobody", "format": "wav"})


def test_realtime_text_item_gets_a_spoken_answer(running):
    session = Realtime(running)
    try:
        assert session.recv()["type"] == "session.created"
        session.send({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"], "max_output_tokens": MAX_TOKENS,
            "audio": {"output": {"voice": "Ethan"}}}})
        assert session.until("session.updated")[-1]["session"]["audio"]["output"]["voice"] == "Ethan"
        session.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there!"}]}})
        session.send({"type": "response.create"})
        events = session.until("response.done")
    finally:
        session.close()
    assert in_order(events, "response.created", "response.output_audio_transcript.delta",
                    "response.output_audio.delta", "response.output_audio.done", "response.done")
    done = events[-1]["response"]  # the tiny thinker writes to the token limit
    assert done["status"] in ("completed", "incomplete") and done["output"][0]["content"][0]["transcript"]
    assert len(audio_of(events)) > 0


def test_speech_endpoint_speaks_in_a_checkpoint_voice(client):
    model = client.models.list().data[0].id
    response = client.audio.speech.create(model=model, voice="Ethan", input="Hello there. How are you?",
                                          response_format="wav")
    with wave.open(io.BytesIO(response.content)) as speech:
        assert speech.getframerate() == 24_000 and speech.getnchannels() == 1
        assert speech.getnframes() >= 16  # two codec frames or more of the tiny Code2Wav
