"""Our Qwen2.5-Omni preprocessing against transformers' Qwen2VLImageProcessorPil (the Pillow/numpy
backend; the default Qwen2VLImageProcessor and the video processor need torchvision) and
WhisperFeatureExtractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omnilive.media.qwen_preprocess import (
    ImagePreprocessConfig,
    VisionPatches,
    log_mel_spectrogram,
    preprocess_image,
    preprocess_images,
    preprocess_video,
    smart_resize,
)

transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

# Qwen2.5-Omni-7B's preprocessor_config.json (image and audio parts)
OMNI_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
}


def random_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


def reference_patches(images, **kwargs) -> VisionPatches:
    out = Qwen2VLImageProcessorPil(**kwargs)(images=images, return_tensors="pt")
    return VisionPatches(out["pixel_values"], out["image_grid_thw"])


def assert_same_patches(got: VisionPatches, expected: VisionPatches) -> None:
    assert torch.equal(got.grid_thw, expected.grid_thw)
    assert got.pixel_values.shape == expected.pixel_values.shape
    assert (got.pixel_values - expected.pixel_values).abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    "width, height",
    [(640, 480), (5, 7), (3000, 40), (28, 28), (333, 517)],  # tiny, very wide, exact, odd
)
def test_image_matches_transformers(width, height):
    image = random_image(width, height, seed=width)
    assert_same_patches(preprocess_image(image), reference_patches([image]))


def test_image_above_max_pixels_is_shrunk_like_transformers():
    image = random_image(900, 700, seed=3)
    config = ImagePreprocessConfig(min_pixels=3136, max_pixels=200 * 28 * 28)
    got = preprocess_image(image, config)
    assert_same_patches(got, reference_patches([image], min_pixels=3136, max_pixels=200 * 28 * 28))
    assert got.token_counts() == [got.pixel_values.shape[0] // 4] and got.token_counts()[0] <= 200


def test_transparent_image_is_composited_over_white_like_transformers():
    image = random_image(60, 90, seed=4, mode="RGBA")
    assert_same_patches(preprocess_image(image), reference_patches([image]))


def test_several_images_concatenate_like_transformers():
    images = [random_image(100, 60, seed=5), random_image(56, 300, seed=6)]
    assert_same_patches(preprocess_images(images), reference_patches(images))


def test_config_from_omni_preprocessor_json():
    config = ImagePreprocessConfig.from_dict(OMNI_PREPROCESSOR)
    assert config.max_pixels == 12845056 and config.factor == 28
    assert ImagePreprocessConfig.from_dict({"size": {"shortest_edge": 100, "longest_edge": 5000}}).max_pixels == 5000
    image = random_image(1200, 800, seed=7)  # within 12.8 Mpx: only rounded to multiples of 28
    assert preprocess_image(image, config).grid_thw.tolist() == [[1, 58, 86]]


def test_video_patch_layout_matches_per_frame_image_patches():
    """Row r of a video holds, in temporal slot k, the patch that the image processor puts in row r
    for frame 2t + k; an odd frame count repeats the last frame."""
    frames = [random_image(112, 84, seed=10 + i) for i in range(5)]
    video = preprocess_video(frames, min_pixels=28 * 28, max_pixels=112 * 84)
    assert video.grid_thw.tolist() == [[3, 6, 8]]
    slots = video.pixel_values.view(3, 48, 3, 2, 14, 14)  # [t, rows, C, T, P, P]
    for index, frame in enumerate(frames + [frames[-1]]):
        single = reference_patches([frame], min_pixels=28 * 28, max_pixels=112 * 84).pixel_values
        expected = single.view(48, 3, 2, 14, 14)[:, :, 0]
        assert (slots[index // 2, :, :, index % 2] - expected).abs().max().item() <= 1e-6


def test_video_frames_follow_the_video_pixel_range():
    frames = [random_image(640, 360, seed=20)] * 2
    (t, h, w), = preprocess_video(frames).grid_thw.tolist()
    assert t == 1 and 128 * 4 <= h * w <= 768 * 4  # Qwen2.5-Omni: 128..768 merge units per frame


def test_smart_resize_refuses_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500, 28, 3136, 1003520)


def whisper_valid_frames(samples: np.ndarray, chunk_length: int) -> np.ndarray:
    extractor = transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=chunk_length)
    out = extractor(samples, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np")
    return out["input_features"][0][:, out["attention_mask"][0].astype(bool)]


@pytest.mark.parametrize("num_samples", [12345, 16000, 479_990])
def test_log_mel_matches_whisper_on_noise(num_samples):
    samples = (np.random.default_rng(num_samples).standard_normal(num_samples) * 0.1).astype(np.float32)
    expected = whisper_valid_frames(samples, chunk_length=30)
    got = log_mel_spectrogram(samples, max_seconds=30).numpy()
    assert got.shape == expected.shape == (128, -(-num_samples // 160))
    assert np.abs(got - expected).max() <= 1e-4


def test_log_mel_matches_whisper_on_a_tone_ending_loud():
    """A tone that ends at full level: the last frames must see zero padding, not a reflection."""
    t = np.arange(20_000) / 16000
    samples = (np.sin(2 * np.pi * 440 * t) * np.linspace(0.01, 1.0, t.size)).astype(np.float32)
    expected = whisper_valid_frames(samples, chunk_length=30)
    got = log_mel_spectrogram(samples, max_seconds=30).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_log_mel_matches_whisper_with_a_click_at_the_very_end():
    """Near-silence, then a click in the last samples: the frame centred just past the end sees
    it best, and the reference counts that frame in its max (and so in the max - 8 floor)."""
    samples = (np.random.default_rng(2).standard_normal(160 * 50) * 1e-4).astype(np.float32)
    samples[-30:] = np.hanning(30)
    expected = whisper_valid_frames(samples, chunk_length=30)
    got = log_mel_spectrogram(samples, max_seconds=30).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_log_mel_cuts_audio_longer_than_the_limit_like_whisper():
    samples = (np.random.default_rng(1).standard_normal(24_000) * 0.1).astype(np.float32)
    expected = whisper_valid_frames(samples, chunk_length=1)  # the reference truncates at 1 s
    got = log_mel_spectrogram(samples, max_seconds=1).numpy()
    assert got.shape == expected.shape == (128, 100)
    assert np.abs(got - expected).max() <= 1e-4
