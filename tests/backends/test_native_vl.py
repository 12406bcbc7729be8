"""The native engine on a tiny random Qwen2.5-VL checkpoint (float32), against transformers' generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnilive.backends.native_prompt import chat_template_of
from omnilive.backends.native_vl import VL_CHAT_TEMPLATE, VLProcessor
from omnilive.types import (
    AudioInput,
    EngineError,
    EngineRequest,
    Finished,
    ImageInput,
    Message,
    SamplingParams,
    TextDelta,
    VideoInput,
)
from omnilive.model.qwen2_5_vl import Qwen2_5_VL
from tests.backends.native_backend import (
    clip,
    media_token_types,
    picture,
    reference_greedy,
    run,
    started_backend,
    vision_kwargs,
)
from tests.model.vl_tiny import IMAGE, VIDEO, VISION_BOS, VISION_EOS, build_tiny_vl

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vl(tmp_path_factory.mktemp("vl"), seed=1)


@pytest.fixture(scope="module")
def engine(tiny):
    yield from started_backend(tiny.directory)


def reference_tokens(tiny, engine, messages) -> list[int]:
    """transformers' greedy generate on the same checkpoint and our processor's inputs."""
    prompt = engine.model.processor.build(messages)
    media = prompt.media
    kwargs = vision_kwargs(media)
    if media.videos is not None:
        kwargs["second_per_grid_ts"] = torch.tensor(media.video_seconds_per_grid)
    ids = torch.tensor([prompt.input_ids])
    kwargs["mm_token_type_ids"] = media_token_types(ids, IMAGE, VIDEO)
    return reference_greedy(tiny.model, engine, ids, kwargs, GREEDY.max_tokens)


@pytest.mark.parametrize("media", ["image", "video"])
def test_greedy_reply_equals_transformers_generate(engine, tiny, media):
    item = ImageInput(picture()) if media == "image" else clip()
    messages = (Message("user", ("What is in this?", item, "Answer briefly.")),)
    expected = reference_tokens(tiny, engine, messages)
    outputs = run(engine, EngineRequest(media, messages, GREEDY))
    finished = outputs[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.completion_tokens == len(expected) >= 8
    assert finished.usage.image_prompt_tokens > 0 and finished.usage.audio_prompt_tokens == 0
    shown = [t for t in expected if t not in engine.model.tokenizer.stop_token_ids]
    text = "".join(out.text for out in outputs if isinstance(out, TextDelta))
    assert text == engine.model.tokenizer.decode(shown, skip_special_tokens=True)


def test_loaded_as_qwen2_5_vl_with_text_out_only(engine):
    assert isinstance(engine.model.thinker, Qwen2_5_VL) and isinstance(engine.model.processor, VLProcessor)
    assert engine.model.talker is None and engine.model.family == "Qwen2.5-VL"
    assert engine.card.output_modalities == ("text",) and engine.card.voices == ()
    assert engine.card.parts[0]["name"] == "Qwen2.5-VL thinker"
    assert engine.model.processor.input_modalities == ("text", "image", "video")


def test_prompt_layout_and_default_system_prompt(engine):
    processor = engine.model.processor
    video = clip(frames=5, fps=2.0, audio=AudioInput(np.zeros(16_000, dtype=np.float32)))  # its audio track is left out
    prompt = processor.build((Message("user", (ImageInput(picture()), video, "Describe.")),))
    text = engine.model.tokenizer.decode(prompt.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("Describe.<|im_end|>\n<|im_start|>assistant\n")
    ids = prompt.input_ids
    images, videos = prompt.media.images, prompt.media.videos
    # 90x60 within 28²..112² pixels → 84x56 → 6x4 patches → 6 merge units; 5 frames → 3 temporal patches
    assert images.grid_thw.tolist() == [[1, 4, 6]] and videos.grid_thw.tolist() == [[3, 4, 6]]
    assert ids.count(IMAGE) == 6 and ids.count(VIDEO) == 18 and prompt.image_tokens == 24
    assert prompt.media.video_seconds_per_grid == (1.0,) and prompt.media.audio_mel is None
    first = ids.index(IMAGE)
    assert ids[first - 1] == VISION_BOS and ids[first + 6] == VISION_EOS
    assert ids[ids.index(VIDEO) - 1] == VISION_BOS  # no audio markers around a video
    own_system = processor.build((Message("system", ("Be brief.",)), Message("user", ("Hi",))))
    assert engine.model.tokenizer.decode(own_system.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_audio_input_is_refused(engine):
    messages = (Message("user", (AudioInput(np.zeros(1600, dtype=np.float32)), "What is this?")),)
    with pytest.raises(EngineError, match="cannot hear") as error:
        engine.model.processor.build(messages)
    assert error.value.param == "messages"
    with pytest.raises(EngineError, match="cannot hear"):
        run(engine, EngineRequest("audio", messages, GREEDY))


def test_audio_out_is_refused(engine):
    request = EngineRequest("speak", (Message("user", ("Hi",)),), GREEDY, modalities=("text", "audio"))
    with pytest.raises(EngineError) as error:
        run(engine, request)
    assert error.value.param == "modalities"


def test_too_many_images_are_refused_before_all_are_preprocessed(engine, monkeypatch):
    # each 112x112 image is 16 merge units; 80 of them pass the tiny model's 1024 positions
    seen = []
    original = VLProcessor._add_image
    monkeypatch.setattr(VLProcessor, "_add_image", lambda self, image, c: seen.append(1) or original(self, image, c))
    messages = (Message("user", tuple(ImageInput(picture(i, (112, 112))) for i in range(80))),)
    with pytest.raises(EngineError, match="context of 1024 tokens") as error:
        engine.model.processor.build(messages)
    assert error.value.code == "context_length_exceeded" and error.value.param == "messages"
    assert len(seen) < 70


@pytest.mark.parametrize("video, message", [
    (VideoInput((), fps=2.0, audio=None), "has no frames"),
    (VideoInput((picture(0, (600, 2)),), fps=2.0, audio=None), "aspect ratio"),
])
def test_bad_video_is_a_clear_error(engine, video, message):
    with pytest.raises(EngineError, match=message) as error:
        engine.model.processor.build((Message("user", (video, "What happens?")),))
    assert error.value.param == "messages"


def test_media_token_text_in_a_message_is_refused(engine):
    with pytest.raises(EngineError, match="placeholders"):
        engine.model.processor.build((Message("user", ("look: <|image_pad|>",)),))


def test_chat_template_falls_back_to_qwen2_5_vl(tiny, tmp_path):
    assert chat_template_of(tiny.directory, VL_CHAT_TEMPLATE) == VL_CHAT_TEMPLATE
    assert chat_template_of(tmp_path, VL_CHAT_TEMPLATE) == VL_CHAT_TEMPLATE
