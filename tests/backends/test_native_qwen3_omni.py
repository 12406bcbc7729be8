"""The native engine on a tiny random Qwen3-Omni checkpoint (thinker, float32), against
transformers' thinker generate: greedy replies equal for text, image, audio, video and video with
its audio, with prefill chunks of 16 tokens that cut through the media (DeepStack rows and the
merged video/audio run); requests stepped together equal each alone; a second turn reuses the KV
blocks and encoder rows of the first."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from omnilive.backends.native_omni import NativeBackend
from omnilive.backends.native_qwen3_omni import Qwen3OmniProcessor
from omnilive.model.qwen3_omni import Qwen3OmniThinker
from omnilive.server.settings import Settings
from omnilive.types import (
    AudioInput,
    EngineRequest,
    Finished,
    ImageInput,
    Message,
    SamplingParams,
    TextDelta,
    VideoInput,
)
from tests.backends.test_native_vl import picture, run
from tests.model.qwen3_omni_tiny import build_tiny_qwen3_omni

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


def tone(seconds: float, hertz: float) -> AudioInput:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return AudioInput((0.3 * np.sin(2 * np.pi * hertz * t)).astype(np.float32))


def clip(frames: int = 4, audio_seconds: float | None = None) -> VideoInput:
    audio = tone(audio_seconds, 220) if audio_seconds else None
    return VideoInput(tuple(picture(10 + i, (84, 56)) for i in range(frames)), fps=2.0, audio=audio)


MESSAGES = {
    "text": (Message("user", ("What is in this picture?",)),),
    "image": (Message("user", ("What is in this?", ImageInput(picture(0, (90, 60))), "Answer briefly.")),),
    "audio": (Message("user", ("Listen:", tone(2.3, 440), "What is it?")),),
    "video": (Message("user", ("What happens?", clip(frames=5))),),
    "video_with_audio": (Message("user", ("What happens?", clip(frames=6, audio_seconds=3.0))),),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3_omni"), seed=6, with_tokenizer=True)


@pytest.fixture(scope="module")
def engine(tiny):
    settings = Settings(model=str(tiny.directory), dtype="float32", threads=1, max_context_tokens=1024,
                        prefill_chunk_tokens=16)
    engine = NativeBackend(settings)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.stop())


def reference_tokens(tiny, engine, messages) -> list[int]:
    """transformers' thinker, greedy, on our processor's inputs (equal to transformers' processor's:
    tests/media/test_qwen3_omni_processor.py)."""
    prompt = engine.model.processor.build(messages)
    media = prompt.media
    ids = torch.tensor([prompt.input_ids])
    kwargs = {}
    if media.images is not None:
        kwargs |= {"pixel_values": media.images.pixel_values, "image_grid_thw": media.images.grid_thw}
    if media.videos is not None:
        kwargs |= {"pixel_values_videos": media.videos.pixel_values, "video_grid_thw": media.videos.grid_thw,
                   "video_second_per_grid": torch.tensor(media.video_seconds_per_grid)}
    if media.audio_mel is not None:
        frames = media.audio_frames.tolist()
        longest = max(frames)
        kwargs |= {"input_features": torch.stack([torch.nn.functional.pad(m, (0, longest - m.shape[1]))
                                                  for m in media.audio_mel.split(frames, dim=1)]),
                   "feature_attention_mask": (torch.arange(longest)[None] < torch.tensor(frames)[:, None]).long()}
    config = engine.model.thinker.thinker_config
    marks = [config.vision_start_token_id, config.audio_start_token_id]  # a video with its audio
    kwargs["use_audio_in_video"] = any(list(pair) == marks for pair in zip(prompt.input_ids, prompt.input_ids[1:]))
    tiny.thinker.model.rope_deltas = None
    with torch.no_grad():
        generated = tiny.thinker.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=GREEDY.max_tokens,
                                          eos_token_id=sorted(engine.model.tokenizer.stop_token_ids), **kwargs)
    return generated[0, ids.shape[1]:].tolist()


def told(outputs) -> str:
    return "".join(out.text for out in outputs if isinstance(out, TextDelta))


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_greedy_reply_equals_transformers_generate(engine, tiny, case):
    messages = MESSAGES[case]
    expected = reference_tokens(tiny, engine, messages)
    outputs = run(engine, EngineRequest(case, messages, GREEDY))
    finished = outputs[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.completion_tokens == len(expected)
    tokenizer = engine.model.tokenizer
    shown = [t for t in expected if t not in tokenizer.stop_token_ids]
    assert len(set(shown)) > 1  # not one token repeated: the comparison means something
    assert told(outputs) == tokenizer.decode(shown, skip_special_tokens=True)


def test_requests_stepped_together_equal_each_alone(engine):
    alone = {case: told(run(engine, EngineRequest(case, messages, GREEDY))) for case, messages in MESSAGES.items()}

    async def together():
        async def one(case):
            request = EngineRequest(f"{case}-b", MESSAGES[case], GREEDY)
            return case, told([out async for out in engine.generate(request)])

        return dict(await asyncio.gather(*(one(case) for case in MESSAGES)))

    assert asyncio.run(together()) == alone


def test_loaded_as_qwen3_omni_text_out(engine):
    assert isinstance(engine.model.thinker, Qwen3OmniThinker)
    assert isinstance(engine.model.processor, Qwen3OmniProcessor)
    assert engine.model.family == "Qwen3-Omni" and engine.model.talker is None
    assert engine.card.output_modalities == ("text",)
    assert engine.model.processor.input_modalities == ("text", "image", "audio", "video")


def test_a_second_turn_reuses_cached_blocks_and_encoder_rows_and_replies_as_transformers(engine, tiny):
    first_turn = MESSAGES["audio"]
    said = told(run(engine, EngineRequest("turn-1", first_turn, GREEDY)))
    second_turn = (*first_turn, Message("assistant", (said,)),
                   Message("user", ("And this?", ImageInput(picture(9, (128, 64))))))
    hits = engine.media_cache.hits
    outputs = run(engine, EngineRequest("turn-2", second_turn, GREEDY))
    assert engine.media_cache.hits == hits + 1  # the first turn's audio was not encoded again
    assert outputs[-1].usage.cached_prompt_tokens >= 16
    tokenizer = engine.model.tokenizer
    expected = [t for t in reference_tokens(tiny, engine, second_turn) if t not in tokenizer.stop_token_ids]
    assert told(outputs) == tokenizer.decode(expected, skip_special_tokens=True)
