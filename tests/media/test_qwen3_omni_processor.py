"""Our Qwen3-Omni processor against transformers' Qwen3OmniMoeProcessor, built from its parts (its
from_pretrained needs torchvision, which we cannot install), on the same messages: input ids,
pixel values, grid sizes, video_second_per_grid, mel features and TM-RoPE position ids; and a
video's audio merged with its frames as transformers' `replace_video_with_audio_token` writes it.

Video: tests/model/vl_tiny.py's FramesVideoProcessor stands in for the video processor's resize +
patchify (per-frame pixel budget, as our processor resizes Qwen3-Omni's frames); the token
expansion, video_second_per_grid and get_rope_index are transformers' own.
"""

from __future__ import annotations

import pytest
import torch

from omnilive.backends.native_omni import load_omni
from omnilive.model.qwen3_omni_rope import video_with_audio_placeholders
from omnilive.types import AudioInput, ImageInput, Message, VideoInput
from tests.media.test_processor_parity import media_of, picture, template_messages, tone
from tests.model.qwen3_omni_tiny import PREPROCESSOR, VIDEO_PREPROCESSOR, build_tiny_qwen3_omni
from tests.model.vl_tiny import without_video_class_check

transformers = pytest.importorskip("transformers")

FPS = 2.0
TOKEN_NAMES = {"image_token": "<|image_pad|>", "audio_token": "<|audio_pad|>", "video_token": "<|video_pad|>",
               "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
               "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>"}
MESSAGES = (
    Message("user", ("Listen:", AudioInput(tone(1.3, 440)), ImageInput(picture(5, (90, 60))),
                     AudioInput(tone(2.45, 880)),
                     VideoInput(tuple(picture(20 + i, (84, 56)) for i in range(4)), fps=FPS, audio=None),
                     "What is it?")),
)


@pytest.fixture(scope="module")
def qwen3_omni(tmp_path_factory):
    from transformers import Qwen2TokenizerFast, Qwen3OmniMoeProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from omnilive.backends.native_qwen3_omni import QWEN3_OMNI_CHAT_TEMPLATE
    from tests.model.vl_tiny import FramesVideoProcessor

    tiny = build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3_omni"), seed=6, with_tokenizer=True)
    tokenizer = Qwen2TokenizerFast(tokenizer_file=str(tiny.directory / "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", extra_special_tokens=TOKEN_NAMES)
    image_keys = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean",
                  "image_std")
    reference = without_video_class_check(Qwen3OmniMoeProcessor)(
        image_processor=Qwen2VLImageProcessorPil(**{k: PREPROCESSOR[k] for k in image_keys}),
        video_processor=FramesVideoProcessor(FPS, VIDEO_PREPROCESSOR["min_pixels"], VIDEO_PREPROCESSOR["max_pixels"],
                                             patch_size=VIDEO_PREPROCESSOR["patch_size"]),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, hop_length=160, n_fft=400,
                                                  chunk_length=300),
        tokenizer=tokenizer, chat_template=QWEN3_OMNI_CHAT_TEMPLATE)
    return tiny, load_omni(tiny.directory, "float32"), reference


def test_qwen3_omni_processor_equals_transformers(qwen3_omni):
    tiny, ours, reference = qwen3_omni
    text = reference.apply_chat_template(template_messages(MESSAGES), add_generation_prompt=True, tokenize=False)
    audios = [item.samples for item in media_of(MESSAGES, AudioInput)]
    videos = [list(item.frames) for item in media_of(MESSAGES, VideoInput)]
    expected = reference(text=[text], images=[media_of(MESSAGES, ImageInput)[0].image], audio=audios, videos=videos,
                         videos_kwargs={"fps": FPS}, return_tensors="pt")
    prompt = ours.processor.build(MESSAGES)
    media = prompt.media

    assert prompt.input_ids == expected["input_ids"][0].tolist()
    assert torch.equal(media.images.grid_thw, expected["image_grid_thw"])
    assert torch.allclose(media.images.pixel_values, expected["pixel_values"], atol=1e-6)
    assert torch.equal(media.videos.grid_thw, expected["video_grid_thw"])
    assert torch.allclose(media.videos.pixel_values, expected["pixel_values_videos"], atol=1e-6)
    assert list(media.video_seconds_per_grid) == torch.as_tensor(expected["video_second_per_grid"]).tolist()
    mask = expected["feature_attention_mask"]
    assert media.audio_frames.tolist() == mask.sum(-1).tolist() == [130, 245]
    features = torch.cat([f[:, m.bool()] for f, m in zip(expected["input_features"], mask)], dim=1)
    assert media.audio_mel.shape == features.shape
    assert torch.allclose(media.audio_mel, features, atol=1e-4)

    ids = expected["input_ids"]
    positions, deltas = tiny.thinker.model.get_rope_index(
        ids, image_grid_thw=expected["image_grid_thw"], video_grid_thw=expected["video_grid_thw"],
        attention_mask=expected["attention_mask"], use_audio_in_video=False, audio_seqlens=mask.sum(-1),
        second_per_grids=torch.as_tensor(expected["video_second_per_grid"]))
    rope = ours.thinker.prepare_prompt(prompt.input_ids, media).rope
    assert torch.equal(rope.positions, positions[:, 0].long())
    assert rope.delta == int(deltas.flatten()[0])


@pytest.mark.parametrize("grid, seconds, audio_tokens", [((3, 4, 4), 1.0, 39), ((2, 8, 8), 1.0, 5),
                                                         ((4, 4, 6), 2.0, 100)])
def test_video_audio_merge_equals_transformers(qwen3_omni, grid, seconds, audio_tokens):
    _, ours, reference = qwen3_omni
    text = reference.replace_video_with_audio_token(
        {"video_grid_thw": torch.tensor([grid]), "video_second_per_grid": [seconds]}, 0,
        {"num_audio_tokens": [audio_tokens]}, 0, position_id_per_seconds=13)
    expected = reference.tokenizer(text)["input_ids"]
    layout = ours.thinker.thinker_config.mrope_layout
    merged = video_with_audio_placeholders(grid, seconds, audio_tokens, layout)
    assert expected == [layout.audio_start_token_id, *merged, ours.thinker.thinker_config.audio_end_token_id]
