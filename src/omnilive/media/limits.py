"""Bounds on what one media item may cost to decode, and the sizes it is normalised to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    # encoded size of one item (after base64 decoding)
    max_bytes: int = 25 * 1024 * 1024
    # images: refuse above max_image_pixels before decoding; shrink anything whose longer
    # side exceeds image_max_side (keeps OCR and vision encoders fast)
    max_image_pixels: int = 50_000_000
    image_max_side: int = 2048
    # audio: decoded length cap (16 kHz mono float32 → 64 kB per second)
    max_audio_seconds: float = 600.0
    # raw pcm16 without a header: OpenAI realtime and chat "pcm16" are 24 kHz mono
    pcm16_sample_rate: int = 24_000
    # video: frames sampled at video_fps (lowered when the clip would exceed
    # max_video_frames), each shrunk to at most video_frame_max_pixels (Qwen-Omni's
    # 768 patches of 28x28)
    max_video_seconds: float = 180.0
    max_video_frames: int = 360
    video_fps: float = 2.0
    video_frame_max_pixels: int = 768 * 28 * 28
    # wall-clock cap on decoding one item: the last guard against inputs that are slow to decode
    decode_timeout_s: float = 60.0
    # remote http(s) URLs are refused unless allowed; fetching is bounded by fetch_timeout_s
    allow_remote_urls: bool = False
    fetch_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_image_pixels <= 0 or self.image_max_side < 16:
            raise ValueError("media limits must be positive (image_max_side >= 16)")
        if self.video_fps <= 0 or self.max_video_frames < 1 or self.video_frame_max_pixels < 256:
            raise ValueError("video limits must be positive")


DEFAULT_LIMITS = MediaLimits()
