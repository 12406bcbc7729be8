"""Qwen2.5-Omni's media preprocessing: images and video frames → patch rows for the vision
encoder, 16 kHz audio → 128-bin log-mel for the audio encoder.

Equal to transformers' Qwen2VLImageProcessor (its Pillow/numpy backend) and
WhisperFeatureExtractor, with numpy, torch and Pillow only. Video frames go through the image
path (Pillow bicubic); transformers' video processor resizes with torchvision instead, so
resized video pixels may differ from it by a few levels — the patch layout is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Self

import numpy as np
import torch
from PIL import Image

# OpenAI CLIP statistics, which Qwen2-VL's processors use
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Qwen2.5-Omni's processor: video frames get their own pixel range per frame
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28

# Whisper's front end; Qwen2.5-Omni keeps it but with 128 mel bins and 300 s inputs
SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
MAX_AUDIO_SECONDS = 300


@dataclass(frozen=True)
class ImagePreprocessConfig:
    """The image part of the checkpoint's preprocessor_config.json."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merge unit of patches."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        size = raw.get("size") or {}
        return cls(
            min_pixels=raw.get("min_pixels", size.get("shortest_edge", cls.min_pixels)),
            max_pixels=raw.get("max_pixels", size.get("longest_edge", cls.max_pixels)),
            patch_size=raw.get("patch_size", cls.patch_size),
            temporal_patch_size=raw.get("temporal_patch_size", cls.temporal_patch_size),
            merge_size=raw.get("merge_size", cls.merge_size),
            image_mean=tuple(raw.get("image_mean", cls.image_mean)),
            image_std=tuple(raw.get("image_std", cls.image_std)),
        )


@dataclass(frozen=True)
class VisionPatches:
    """pixel_values [N, C*T*P*P] float32 and grid_thw [items, 3] int64 (t, h, w in patches),
    in the layout `model.vision.VisionEncoder` takes."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor

    def token_counts(self, merge_size: int = 2) -> list[int]:
        """LM placeholder tokens per item: one per 2x2 merge unit."""
        return [t * h * w // merge_size**2 for t, h, w in self.grid_thw.tolist()]

    @staticmethod
    def concat(items: Sequence[VisionPatches]) -> VisionPatches:
        return VisionPatches(
            torch.cat([item.pixel_values for item in items]), torch.cat([item.grid_thw for item in items])
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size Qwen2-VL resizes to: both sides multiples of `factor`, area within
    [min_pixels, max_pixels], aspect ratio kept as closely as those allow."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio must be at most 200, got {width}x{height}")
    new_h, new_w = round(height / factor) * factor, round(width / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


def video_frame_size(num_frames: int, height: int, width: int, factor: int, temporal_patch_size: int,
                     min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The frame size Qwen3-VL's video processor resizes to: sides multiples of `factor`, and
    the pixels of all frames together (frame count rounded to whole temporal patches) within
    [min_pixels, max_pixels]; a side below `factor` is first scaled up to it."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"video aspect ratio must be at most 200, got {width}x{height}")
    frames = max(num_frames, temporal_patch_size)
    new_h, new_w = round(height / factor) * factor, round(width / factor) * factor
    total = round(frames / temporal_patch_size) * temporal_patch_size * new_h * new_w
    if total > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif total < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited over white (as transformers does)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resized_normalized(image: Image.Image, height: int, width: int, config: ImagePreprocessConfig) -> np.ndarray:
    """→ [H, W, C] float32: bicubic resize on uint8, scale to [0, 1], CLIP-normalise."""
    resized = np.asarray(to_rgb(image).resize((width, height), resample=Image.Resampling.BICUBIC))
    scaled = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    return (scaled - mean) / std


def _patchify(frames: np.ndarray, config: ImagePreprocessConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """frames [F, H, W, C] (F a multiple of T) → rows [t*h*w, C*T*P*P] and the (t, h, w) grid.

    Rows go frame group by frame group, then merge unit by merge unit (row-major), then the
    2x2 patches of a unit; each row holds a patch's pixels as (C, T, P, P).
    """
    num_frames, height, width, channels = frames.shape
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_t, grid_h, grid_w = num_frames // tp, height // p, width // p
    patches = frames.reshape(grid_t, tp, grid_h // m, m, p, grid_w // m, m, p, channels)
    # (t, T, gh, mh, ph, gw, mw, pw, C) → (t, gh, gw, mh, mw, C, T, ph, pw)
    patches = patches.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    rows = patches.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
    return rows, (grid_t, grid_h, grid_w)


def preprocess_image(image: Image.Image, config: ImagePreprocessConfig = ImagePreprocessConfig()) -> VisionPatches:
    """One image → its patches; the frame is repeated over the temporal patch (t = 1)."""
    height, width = smart_resize(image.height, image.width, config.factor, config.min_pixels, config.max_pixels)
    frame = _resized_normalized(image, height, width, config)
    frames = np.broadcast_to(frame, (config.temporal_patch_size, *frame.shape))
    rows, grid = _patchify(frames, config)
    return VisionPatches(torch.from_numpy(np.ascontiguousarray(rows)), torch.tensor([grid], dtype=torch.int64))


def preprocess_images(
    images: Sequence[Image.Image], config: ImagePreprocessConfig = ImagePreprocessConfig()
) -> VisionPatches:
    return VisionPatches.concat([preprocess_image(image, config) for image in images])


def preprocess_video(
    frames: Sequence[Image.Image],
    config: ImagePreprocessConfig = ImagePreprocessConfig(),
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    size: tuple[int, int] | None = None,
) -> VisionPatches:
    """Already-sampled frames of one video (all the first frame's size) → its patches.

    Frames are resized within [min_pixels, max_pixels] each, or to `size` (height, width)
    when given. Pairs of consecutive frames share a temporal patch; an odd count repeats the
    last frame.
    """
    if not frames:
        raise ValueError("a video needs at least one frame")
    first = frames[0]
    height, width = size or smart_resize(first.height, first.width, config.factor, min_pixels, max_pixels)
    resized = [_resized_normalized(frame, height, width, config) for frame in frames]
    resized += [resized[-1]] * (-len(resized) % config.temporal_patch_size)
    rows, grid = _patchify(np.stack(resized), config)
    return VisionPatches(torch.from_numpy(np.ascontiguousarray(rows)), torch.tensor([grid], dtype=torch.int64))


def _hertz_to_slaney_mel(hertz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * hertz / 200.0
    log_region = hertz >= 1000.0
    mels[log_region] = 15.0 + np.log(hertz[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _slaney_mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    hertz = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    hertz[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - 15.0))
    return hertz


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> torch.Tensor:
    """[n_fft/2 + 1, n_mels] float32: Slaney-scaled, area-normalised triangles over 0–8 kHz
    (librosa's defaults, which Whisper uses), built in float64 as transformers does."""
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    mel_edges = np.linspace(0.0, _hertz_to_slaney_mel(np.array([8000.0]))[0], n_mels + 2)
    edges = _slaney_mel_to_hertz(mel_edges)  # [n_mels + 2] Hz
    slopes = edges[None, :] - fft_freqs[:, None]  # [bins, n_mels + 2]
    rising = -slopes[:, :-2] / np.diff(edges)[:-1]
    falling = slopes[:, 2:] / np.diff(edges)[1:]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    triangles *= 2.0 / (edges[2:] - edges[:-2])[None, :]
    return torch.from_numpy(triangles).float()


def log_mel_spectrogram(
    samples: np.ndarray, n_mels: int = 128, max_seconds: float = MAX_AUDIO_SECONDS
) -> torch.Tensor:
    """16 kHz mono float samples → [n_mels, ceil(n / 160)] float32 log-mel.

    Equals the valid frames (feature_attention_mask) of WhisperFeatureExtractor padded to
    `max_seconds` with attention mask, as Qwen2.5-Omni's processor calls it: longer audio is
    cut at `max_seconds`. Instead of computing 300 s of zeros we pad just past the audio: the
    frames that still see audio and the dynamic-range floor (max - 8) come out the same.
    """
    waveform = torch.from_numpy(np.asarray(samples, dtype=np.float32)).flatten()
    waveform = waveform[: int(max_seconds * SAMPLE_RATE)]
    num_samples = waveform.shape[0]
    if num_samples == 0:
        raise ValueError("empty audio")
    # past num_samples + N_FFT every frame (and every reflected sample) is silence; the
    # reference pads to max_seconds, so never pad beyond that either
    padded_length = min(num_samples + N_FFT, int(max_seconds * SAMPLE_RATE))
    waveform = torch.nn.functional.pad(waveform, (0, padded_length - num_samples))

    stft = torch.stft(waveform, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[..., :-1].abs() ** 2  # [bins, frames]; the last frame is dropped, as in Whisper
    mel = mel_filters(n_mels).T @ power  # [n_mels, frames]
    log_mel = torch.clamp(mel, min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
    log_mel = (log_mel + 4.0) / 4.0
    return log_mel[:, : math.ceil(num_samples / HOP_LENGTH)].contiguous()
