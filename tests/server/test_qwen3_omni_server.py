"""`omnilive serve --model DIR` on a tiny random Qwen3-Omni checkpoint (thinker, text out),
through the OpenAI client.

A real server subprocess; a request carries an image, an audio clip and a video with its own
audio track (merged with its frames by time). The greedy reply equals transformers' thinker
generate on the same prompt: the ids and encoder inputs our processor builds from the same
decoded media, fed to transformers' Qwen3OmniMoeThinkerForConditionalGeneration (its own
encoders, positions and decoder). Speech is the next step: audio out is a 400.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from omnilive.backends.native_omni import load_omni
from omnilive.media.decode import decode_audio, decode_image, decode_video
from omnilive.types import Message
from tests.model.qwen3_omni_tiny import build_tiny_qwen3_omni
from tests.server.test_media_chat import data_url, text_video
from tests.server.test_native_server import png_bytes, wav_bytes
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
def client(tiny, tmp_path_factory):
    from openai import OpenAI

    args = ["--model", str(tiny.directory), "--dtype", "float32"]
    with ServerProcess(tmp_path_factory.mktemp("qwen3-omni-data"), api_key=API_KEY, env={"OMNILIVE_THREADS": "1"},
                       args=args) as running:
        with OpenAI(base_url=f"{running.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as openai_client:
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


def test_model_card_is_text_out_with_every_input(client, tiny):
    (model,) = client.models.list().data
    assert model.id == tiny.directory.name and model.owned_by == "omnilive"


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


def test_audio_out_is_a_400(client):
    import openai

    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                       modalities=["text", "audio"], audio={"voice": "chelsie", "format": "wav"})
