"""Synthesised speech (mono float32) → the bytes of the audio format a client asked for.

Formats follow OpenAI's `response_format` / `audio.format` names: wav, mp3, flac, opus (in an
Ogg container), aac (ADTS stream) and pcm16 (raw little-endian 16-bit, no header; "pcm" is an alias).
"""

from __future__ import annotations

import io
from typing import Literal, get_args

import av
import numpy as np
import soundfile

AudioFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)

_ALIASES = {"pcm": "pcm16", "s16le": "pcm16", "ogg": "opus"}
_MIME = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "pcm16": "audio/pcm",
}
# (FFmpeg container, encoder, bit rate) for the lossy formats
_LOSSY = {
    "mp3": ("mp3", "libmp3lame", 64_000),
    "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000),
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # what Opus encodes natively


def normalize_format(fmt: str) -> AudioFormat:
    """Accept the format names clients send ("pcm", "MP3"...), or raise ValueError."""
    name = _ALIASES.get(fmt.lower(), fmt.lower())
    if name not in AUDIO_FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}; choose one of {', '.join(AUDIO_FORMATS)}")
    return name  # type: ignore[return-value]


def audio_mime(fmt: str) -> str:
    """The Content-Type for an encoded format."""
    return _MIME[normalize_format(fmt)]


def pcm16_bytes(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] → raw little-endian int16 bytes. Stateless, so safe per streamed chunk."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return np.round(clipped * 32767.0).astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    """The inverse of `pcm16_bytes` (a trailing odd byte is dropped)."""
    usable = len(data) - len(data) % 2
    return np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32767.0


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode one whole mono clip. `samples`: (n,) float32 in [-1, 1]."""
    name = normalize_format(fmt)
    samples = _mono_float32(samples)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if name == "pcm16":
        return pcm16_bytes(samples)
    if name in ("wav", "flac"):
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, sample_rate, format=name.upper(), subtype="PCM_16")
        return buffer.getvalue()
    return _encode_lossy(samples, sample_rate, name)


def _encode_lossy(samples: np.ndarray, sample_rate: int, name: str) -> bytes:
    container_format, codec, bit_rate = _LOSSY[name]
    rate = sample_rate
    if name == "opus" and rate not in _OPUS_RATES:
        rate = 48_000
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        stream.bit_rate = bit_rate
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = sample_rate
            # PyAV re-chunks to the encoder's frame size and converts format/rate as needed
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):  # flush the encoder's look-ahead
            container.mux(packet)
    return buffer.getvalue()


def _mono_float32(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {array.shape}")
    return np.ascontiguousarray(np.clip(array, -1.0, 1.0))
