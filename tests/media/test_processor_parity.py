"""Our processors as a whole against transformers' Qwen2_5_VLProcessor and Qwen2_5OmniProcessor,
built from their parts (tokenizer, Pillow image processor, Whisper feature extractor; their
from_pretrained needs torchvision, which we cannot install), on the same messages: input ids,
pixel values, grid sizes, second_per_grid_ts, mel features and M-RoPE position ids.

Video: transformers' video processors all need torchvision, so tests/model/vl_tiny.py's
FramesVideoProcessor stands in for the resize + patchify part, made of transformers' Pillow
image processor per frame plus the documented (C, T, P, P) frame-pair layout; the token
expansion, second_per_grid_ts and get_rope_index are transformers' own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omnilive.backends.native_omni import load_omni
from omnilive.backends.native_prompt import SPEECH_SYSTEM_PROMPT
from omnilive.types import AudioInput, ImageInput, Message, VideoInput
from tests.model.omni_tiny import build_tiny_omni
from tests.model.vl_tiny import (
    IMAGE,
    VIDEO,
    build_tiny_vl,
    transformers_vl_processor,
    without_video_class_check,
)

transformers = pytest.importorskip("transformers")

FPS = 2.0


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def tone(seconds: float, hertz: float) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * hertz * t)).astype(np.float32)


def template_messages(messages: tuple[Message, ...]) -> list[dict]:
    """The same conversation as transformers' apply_chat_template takes it."""
    kinds = {ImageInput: "image", AudioInput: "audio", VideoInput: "video"}
    return [{"role": m.role, "content": [{"type": "text", "text": p} if isinstance(p, str) else {"type": kinds[type(p)]}
                                         for p in m.content]} for m in messages]


def media_of(messages, kind):
    return [p for m in messages for p in m.content if isinstance(p, kind)]


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    tiny = build_tiny_vl(tmp_path_factory.mktemp("vl"), seed=3)
    return tiny, load_omni(tiny.directory, "float32"), transformers_vl_processor(tiny.directory, FPS)


VL_CASES = {
    "image": (Message("user", ("What is this?", ImageInput(picture(0, (90, 60))))),),
    "two_images_and_video": (
        Message("system", ("Be brief.",)),
        Message("user", (ImageInput(picture(1, (50, 130))), "and", ImageInput(picture(2, (200, 120))),
                         # resized to 1 x 3 merge units: its temporal ids (0, 2) stay within its width's,
                         # where transformers 5.23 and we agree on the text after it (see model/qwen2_5_vl.py)
                         VideoInput(tuple(picture(10 + i, (110, 60)) for i in range(4)), fps=FPS, audio=None),
                         "Compare them.")),
    ),
}


@pytest.mark.parametrize("case", sorted(VL_CASES))
def test_qwen2_5_vl_processor_equals_transformers(vl, case):
    tiny, ours, reference = vl
    messages = VL_CASES[case]
    text = reference.apply_chat_template(template_messages(messages), add_generation_prompt=True, tokenize=False)
    images = [item.image for item in media_of(messages, ImageInput)] or None
    videos = [list(item.frames) for item in media_of(messages, VideoInput)] or None
    expected = reference(text=[text], images=images, videos=videos, return_tensors="pt")
    prompt = ours.processor.build(messages)
    media = prompt.media

    assert prompt.input_ids == expected["input_ids"][0].tolist()
    assert torch.equal(media.images.grid_thw, expected["image_grid_thw"])
    assert torch.allclose(media.images.pixel_values, expected["pixel_values"], atol=1e-6)
    if videos:
        assert torch.equal(media.videos.grid_thw, expected["video_grid_thw"])
        assert torch.allclose(media.videos.pixel_values, expected["pixel_values_videos"], atol=1e-6)
        assert list(media.video_seconds_per_grid) == expected["second_per_grid_ts"].tolist() == [1.0]

    ids = expected["input_ids"]
    positions, deltas = tiny.model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == IMAGE).long() + 2 * (ids == VIDEO).long(),
        image_grid_thw=expected["image_grid_thw"], video_grid_thw=expected.get("video_grid_thw"),
        second_per_grid_ts=expected.get("second_per_grid_ts"), attention_mask=expected["attention_mask"])
    rope = ours.thinker.prepare_prompt(prompt.input_ids, media).rope
    assert torch.equal(rope.positions, positions[:, 0])
    assert rope.delta == int(deltas.flatten()[0])


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    from transformers import Qwen2_5OmniProcessor, Qwen2TokenizerFast, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tests.model.omni_tiny import CHAT_TEMPLATE, PREPROCESSOR, VIDEO_PREPROCESSOR
    from tests.model.vl_tiny import FramesVideoProcessor

    tiny = build_tiny_omni(tmp_path_factory.mktemp("omni"), seed=4, with_talker=False)
    names = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
             "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
             "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
    tokenizer = Qwen2TokenizerFast(tokenizer_file=str(tiny.directory / "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", extra_special_tokens=names)
    image_keys = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean",
                  "image_std")
    reference = without_video_class_check(Qwen2_5OmniProcessor)(
        image_processor=Qwen2VLImageProcessorPil(**{k: PREPROCESSOR[k] for k in image_keys}),
        video_processor=FramesVideoProcessor(FPS, VIDEO_PREPROCESSOR["min_pixels"], VIDEO_PREPROCESSOR["max_pixels"]),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, hop_length=160, n_fft=400,
                                                  chunk_length=300),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    return tiny, load_omni(tiny.directory, "float32"), reference


OMNI_MESSAGES = (
    Message("system", (SPEECH_SYSTEM_PROMPT,)),
    Message("user", ("Listen:", AudioInput(tone(1.3, 440)), ImageInput(picture(5, (90, 60))),
                     AudioInput(tone(0.45, 880)),
                     VideoInput(tuple(picture(20 + i, (84, 56)) for i in range(4)), fps=FPS, audio=None),
                     "What is it?")),
)


def test_qwen2_5_omni_processor_equals_transformers(omni):
    tiny, ours, reference = omni
    messages = OMNI_MESSAGES
    text = reference.apply_chat_template(template_messages(messages), add_generation_prompt=True, tokenize=False)
    audios = [item.samples for item in media_of(messages, AudioInput)]
    videos = [list(item.frames) for item in media_of(messages, VideoInput)]
    expected = reference(text=[text], images=[media_of(messages, ImageInput)[0].image], audio=audios, videos=videos,
                         return_tensors="pt")
    prompt = ours.processor.build(messages)
    media = prompt.media

    assert prompt.input_ids == expected["input_ids"][0].tolist()
    assert torch.equal(media.images.grid_thw, expected["image_grid_thw"])
    assert torch.allclose(media.images.pixel_values, expected["pixel_values"], atol=1e-6)
    assert torch.equal(media.videos.grid_thw, expected["video_grid_thw"])
    assert torch.allclose(media.videos.pixel_values, expected["pixel_values_videos"], atol=1e-6)
    assert list(media.video_seconds_per_grid) == expected["video_second_per_grid"].tolist()
    mask = expected["feature_attention_mask"]
    assert media.audio_frames.tolist() == mask.sum(-1).tolist() == [130, 45]
    features = torch.cat([f[:, m.bool()] for f, m in zip(expected["input_features"], mask)], dim=1)
    assert media.audio_mel.shape == features.shape
    assert torch.allclose(media.audio_mel, features, atol=1e-4)

    ids = expected["input_ids"]
    positions, deltas = tiny.thinker.get_rope_index(
        ids, image_grid_thw=expected["image_grid_thw"], video_grid_thw=expected["video_grid_thw"],
        attention_mask=expected["attention_mask"], use_audio_in_video=False, audio_seqlens=mask.sum(-1),
        second_per_grids=expected["video_second_per_grid"])
    rope = ours.thinker.prepare_prompt(prompt.input_ids, media).rope
    assert torch.equal(rope.positions, positions[:, 0])
    assert rope.delta == int(deltas.flatten()[0])
