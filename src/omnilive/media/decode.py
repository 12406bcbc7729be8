"""Client bytes → the engine's normalised inputs: RGB images, 16 kHz mono float32 audio, 2 fps video.

The container type is sniffed from the bytes (the declared mime is a hint clients often get wrong)
and only that demuxer is opened: letting FFmpeg probe freely would also enable demuxers such as
HLS or concat, which read other files and URLs named inside the input. Every failure — corrupt,
truncated, empty, too big, too long — surfaces as a MediaError, never as another exception.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageOps

from omnilive.types import ASR_SAMPLE_RATE, AudioInput, ImageInput, VideoInput
from omnilive.media.errors import MediaError
from omnilive.media.limits import DEFAULT_LIMITS, MediaLimits

MediaKind = Literal["image", "audio", "video"]


@dataclass(frozen=True)
class SniffedFormat:
    kind: MediaKind  # "video" containers may hold only audio (an .m4a is an mp4)
    name: str  # the FFmpeg demuxer, or the Pillow format for images


def sniff_format(data: bytes) -> SniffedFormat | None:
    """What the leading bytes say this is, or None when no supported signature matches."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return SniffedFormat("image", "PNG")
    if head.startswith(b"\xff\xd8\xff"):
        return SniffedFormat("image", "JPEG")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return SniffedFormat("image", "GIF")
    if head.startswith(b"BM") and len(data) > 26:
        return SniffedFormat("image", "BMP")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return SniffedFormat("image", "TIFF")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return SniffedFormat("image", "WEBP")
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return SniffedFormat("audio", "wav")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return SniffedFormat("video", "avi")
    if head.startswith(b"fLaC"):
        return SniffedFormat("audio", "flac")
    if head.startswith(b"OggS"):
        return SniffedFormat("audio", "ogg")
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return SniffedFormat("audio", "aiff")
    if head.startswith(b"caff"):
        return SniffedFormat("audio", "caf")
    if head.startswith(b"ID3"):
        return SniffedFormat("audio", "mp3")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:  # ADTS sync, layer 0
        return SniffedFormat("audio", "aac")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio sync
        return SniffedFormat("audio", "mp3")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"avif"):
            return None  # HEIF/AVIF stills: Pillow cannot read them without plugins
        return SniffedFormat("video", "mp4")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # QuickTime without ftyp
        return SniffedFormat("video", "mov")
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska / WebM
        return SniffedFormat("video", "matroska")
    return None


def _check_bytes(data: bytes, limits: MediaLimits, what: str) -> None:
    if not data:
        raise MediaError(f"the {what} is empty", "empty_media")
    if len(data) > limits.max_bytes:
        raise MediaError(
            f"the {what} is {len(data) / 1e6:.1f} MB, over the limit of {limits.max_bytes / 1e6:.1f} MB",
            "media_too_large",
        )


# images


def decode_image(data: bytes, limits: MediaLimits = DEFAULT_LIMITS) -> ImageInput:
    """PNG/JPEG/GIF/WebP/BMP/TIFF bytes → upright RGB, longer side at most `limits.image_max_side`."""
    _check_bytes(data, limits, "image")
    sniffed = sniff_format(data)
    if sniffed is None or sniffed.kind != "image":
        found = f"it looks like {sniffed.kind}" if sniffed else "unrecognised bytes"
        raise MediaError(
            f"unsupported image format ({found}); send PNG, JPEG, GIF, WebP, BMP or TIFF", "unsupported_format"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data), formats=[sniffed.name]).verify()  # structure check; object is spent
            image = Image.open(io.BytesIO(data), formats=[sniffed.name])
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > limits.max_image_pixels:
                raise MediaError(
                    f"image is {width}x{height} = {width * height / 1e6:.0f} Mpx, over the limit of "
                    f"{limits.max_image_pixels / 1e6:.0f} Mpx",
                    "media_too_large",
                )
            side = limits.image_max_side
            image.draft("RGB", (side, side))  # JPEG only: decode at 1/2..1/8 scale for free
            image = ImageOps.exif_transpose(image)  # phones store portrait shots sideways + a tag
            image = _to_rgb(image)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError("image has too many pixels", "media_too_large") from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, or anything Pillow chokes on
        raise MediaError(f"cannot decode image: {_reason(e)}", "invalid_image") from None
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return ImageInput(image=image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey: stretch to 8 bits
        values = np.asarray(image, dtype=np.float32)
        top = float(values.max()) or 1.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:  # transparent pixels over white, as a viewer shows them (black text stays legible)
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# audio

# raw formats without any header: (FFmpeg codec, sample rate or None = limits.pcm16_sample_rate)
_RAW_AUDIO = {
    "pcm16": ("pcm_s16le", None),
    "pcm": ("pcm_s16le", None),
    "s16le": ("pcm_s16le", None),
    "g711_ulaw": ("pcm_mulaw", 8000),
    "pcmu": ("pcm_mulaw", 8000),
    "g711_alaw": ("pcm_alaw", 8000),
    "pcma": ("pcm_alaw", 8000),
}


def decode_audio(
    data: bytes,
    limits: MediaLimits = DEFAULT_LIMITS,
    format_hint: str | None = None,
    sample_rate: int | None = None,
) -> AudioInput:
    """Any supported audio (or the audio track of a video) → 16 kHz mono float32.

    Headerless audio needs `format_hint` ("pcm16" little-endian mono at `sample_rate`, default
    `limits.pcm16_sample_rate` = 24 kHz; or "g711_ulaw"/"g711_alaw" at 8 kHz). Other hints
    ("wav", "mp3"...) are ignored: the bytes say what they are.
    """
    _check_bytes(data, limits, "audio")
    hint = (format_hint or "").lower().replace("audio/", "")
    sniffed = sniff_format(data)
    deadline = time.monotonic() + limits.decode_timeout_s
    if hint in _RAW_AUDIO and (sniffed is None or sniffed.kind == "image"):
        codec, default_rate = _RAW_AUDIO[hint]
        rate = sample_rate or default_rate or limits.pcm16_sample_rate
        samples = _decode_raw(data, codec, rate, limits, deadline)
    elif sniffed is None or sniffed.kind == "image":
        found = f"it looks like an {sniffed.kind}" if sniffed else "unrecognised bytes"
        raise MediaError(
            f"unsupported audio format ({found}); send wav, mp3, flac, ogg/opus, m4a/aac or webm, "
            "or raw pcm16 with its format given",
            "unsupported_format",
        )
    else:
        samples = _decode_container_audio(data, sniffed.name, limits, deadline)
    if samples.size == 0:
        raise MediaError("the audio holds no samples", "empty_media")
    return AudioInput(samples=samples)


def _decode_raw(data: bytes, codec: str, rate: int, limits: MediaLimits, deadline: float) -> np.ndarray:
    if codec == "pcm_s16le" and len(data) % 2:
        raise MediaError("pcm16 audio must have an even number of bytes", "invalid_audio")
    if len(data) / (2 if codec == "pcm_s16le" else 1) / rate > limits.max_audio_seconds:
        raise _too_long("audio", len(data) / (2 if codec == "pcm_s16le" else 1) / rate, limits.max_audio_seconds)
    try:
        context = av.CodecContext.create(codec, "r")
        context.sample_rate, context.layout = rate, "mono"
        frames = context.decode(av.Packet(data))
        return _resample_to_asr(iter(frames), limits, deadline)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - garbage input must end as a MediaError, whatever FFmpeg raises
        raise MediaError(f"cannot decode {codec} audio: {_reason(e)}", "invalid_audio") from None


def _decode_container_audio(data: bytes, demuxer: str, limits: MediaLimits, deadline: float) -> np.ndarray:
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
            if not container.streams.audio:
                raise MediaError("the file has no audio track", "invalid_audio")
            stream = container.streams.audio[0]
            duration = _duration_s(container, stream)
            if duration and duration > limits.max_audio_seconds + 1:
                raise _too_long("audio", duration, limits.max_audio_seconds)
            frames = (f for packet in container.demux(stream) for f in packet.decode())
            return _resample_to_asr(frames, limits, deadline)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - garbage input must end as a MediaError, whatever FFmpeg raises
        raise MediaError(f"cannot decode audio: {_reason(e)}", "invalid_audio") from None


def _resample_to_asr(frames: Iterator[av.AudioFrame], limits: MediaLimits, deadline: float) -> np.ndarray:
    """Decoded frames (any rate, layout, sample format) → (n,) float32 at 16 kHz, bounded in length."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=ASR_SAMPLE_RATE)
    max_samples = int(limits.max_audio_seconds * ASR_SAMPLE_RATE)
    chunks, total = [], 0
    for frame in frames:
        frame.pts = None  # the resampler does not need timestamps and rejects gaps in them
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
            total += chunks[-1].size
        if total > max_samples:
            raise _too_long("audio", total / ASR_SAMPLE_RATE, limits.max_audio_seconds, at_least=True)
        _check_deadline(deadline, limits)
    for out in resampler.resample(None):  # flush what the filter holds back
        chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return np.clip(samples.astype(np.float32, copy=False), -1.0, 1.0)


# video


def decode_video(data: bytes, limits: MediaLimits = DEFAULT_LIMITS) -> VideoInput:
    """mp4/mov/webm/mkv/avi → RGB frames at `limits.video_fps` (lower for long clips) + 16 kHz audio."""
    _check_bytes(data, limits, "video")
    sniffed = sniff_format(data)
    if sniffed is None or sniffed.kind != "video":
        found = f"it looks like {sniffed.kind}" if sniffed else "unrecognised bytes"
        raise MediaError(f"unsupported video format ({found}); send mp4, mov, webm, mkv or avi", "unsupported_format")
    deadline = time.monotonic() + limits.decode_timeout_s
    try:
        with av.open(io.BytesIO(data), mode="r", format=sniffed.name) as container:
            return _decode_video_container(container, limits, deadline)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - garbage input must end as a MediaError, whatever FFmpeg raises
        raise MediaError(f"cannot decode video: {_reason(e)}", "invalid_video") from None


def _decode_video_container(container: av.container.InputContainer, limits: MediaLimits, deadline: float) -> VideoInput:
    if not container.streams.video:
        raise MediaError("the file has no video track (send it as audio instead)", "invalid_video")
    video = container.streams.video[0]
    video.thread_type = "AUTO"
    audio = container.streams.audio[0] if container.streams.audio else None
    duration = _duration_s(container, video)
    if duration and duration > limits.max_video_seconds + 1:
        raise _too_long("video", duration, limits.max_video_seconds)
    # long clips get fewer frames per second rather than losing their end
    fps = limits.video_fps
    if duration:
        fps = min(fps, limits.max_video_frames / duration)

    frames: list[Image.Image] = []
    first_time: float | None = None
    decoded = 0

    audio_frames: list[av.AudioFrame] = []
    streams = [video] + ([audio] if audio is not None else [])
    for packet in container.demux(*streams):
        for frame in packet.decode():
            if isinstance(frame, av.AudioFrame):
                audio_frames.append(frame)
                continue
            t = frame.time if frame.time is not None else decoded / float(video.average_rate or 25)
            decoded += 1
            first_time = t if first_time is None else first_time
            elapsed = t - first_time
            if elapsed > limits.max_video_seconds + 1:
                raise _too_long("video", elapsed, limits.max_video_seconds, at_least=True)
            # take the first frame at or after each 1/fps tick
            if elapsed * fps + 1e-6 >= len(frames) and len(frames) < limits.max_video_frames:
                frames.append(_frame_to_image(frame, limits.video_frame_max_pixels))
            _check_deadline(deadline, limits)
    if not frames:
        raise MediaError("the video holds no decodable frames", "empty_media")
    track = None
    if audio_frames:
        samples = _resample_to_asr(iter(audio_frames), limits, deadline)
        track = AudioInput(samples=samples) if samples.size else None
    return VideoInput(frames=tuple(frames), fps=fps, audio=track)


def _frame_to_image(frame: av.VideoFrame, max_pixels: int) -> Image.Image:
    """Scale inside FFmpeg (cheap) to the pixel budget, then apply the stream's display rotation."""
    width, height = frame.width, frame.height
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        width, height = max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
    image = frame.reformat(width=width, height=height, format="rgb24").to_image()
    rotation = getattr(frame, "rotation", 0) or 0  # degrees counter-clockwise the display matrix turns
    return image.rotate(rotation, expand=True) if rotation else image


# shared helpers


def _duration_s(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """The declared duration, if any (may be wrong: decoding still counts for itself)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _too_long(what: str, seconds: float, limit: float, at_least: bool = False) -> MediaError:
    length = f"{'over ' if at_least else ''}{seconds:.0f} s"
    return MediaError(f"the {what} is {length} long; the limit is {limit:.0f} s", "too_long")


def _check_deadline(deadline: float, limits: MediaLimits) -> None:
    if time.monotonic() > deadline:
        raise MediaError(
            f"decoding took over {limits.decode_timeout_s:.0f} s; send a shorter or smaller file", "too_long"
        )


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text[:200]
