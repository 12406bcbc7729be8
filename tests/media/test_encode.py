"""Encoding speech output: every format decodes back to the same length, rate and pitch."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile

from omnilive.media.decode import decode_audio, sniff_format
from omnilive.media.encode import (
    AUDIO_FORMATS,
    audio_mime,
    encode_audio,
    normalize_format,
    pcm16_bytes,
    pcm16_to_float,
)


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def native_decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with PyAV directly, at the file's own rate (independent of our decoder)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return np.concatenate(chunks), stream.codec_context.sample_rate


@pytest.mark.parametrize("fmt", [f for f in AUDIO_FORMATS if f != "pcm16"])
def test_round_trip_keeps_duration_rate_and_pitch(fmt):
    samples = tone(1.5, 24_000)
    data = encode_audio(samples, 24_000, fmt)
    decoded, rate = native_decode(data)
    assert rate in (24_000, 48_000)  # opus decoders always output 48 kHz
    assert len(decoded) / rate == pytest.approx(1.5, abs=0.09)  # raw ADTS cannot mark its padding
    assert peak_hz(decoded, rate) == pytest.approx(440, abs=2)
    # and our own decoder agrees
    assert decode_audio(data).duration_s == pytest.approx(1.5, abs=0.09)


def test_lossless_formats_are_exact_to_16_bits():
    samples = tone(0.5, 24_000)
    for fmt in ("wav", "flac"):
        decoded, rate = soundfile.read(io.BytesIO(encode_audio(samples, 24_000, fmt)), dtype="float32")
        assert rate == 24_000 and len(decoded) == len(samples)
        assert np.abs(decoded - samples).max() < 1 / 16_000


def test_opus_at_an_odd_rate_is_resampled():
    data = encode_audio(tone(1.0, 22_050), 22_050, "opus")
    decoded, rate = native_decode(data)
    assert rate == 48_000 and len(decoded) / rate == pytest.approx(1.0, abs=0.03)
    assert peak_hz(decoded, rate) == pytest.approx(440, abs=2)


def test_pcm16_is_raw_little_endian_and_clipped():
    data = encode_audio(np.array([0.0, 1.0, -1.0, 2.0, -3.0, 0.5], np.float32), 24_000, "pcm")
    assert np.frombuffer(data, "<i2").tolist() == [0, 32767, -32767, 32767, -32767, 16384]
    assert len(encode_audio(tone(1.0, 24_000), 24_000, "pcm16")) == 48_000


def test_streamed_pcm16_chunks_join_to_the_whole():
    samples = tone(1.0, 24_000)
    chunks = np.array_split(samples, 7)
    assert b"".join(pcm16_bytes(c) for c in chunks) == pcm16_bytes(samples)
    assert np.abs(pcm16_to_float(pcm16_bytes(samples)) - samples).max() < 1e-4


def test_format_names_and_mimes():
    assert [audio_mime(f) for f in ("wav", "mp3", "flac", "opus", "aac", "pcm")] == [
        "audio/wav",
        "audio/mpeg",
        "audio/flac",
        "audio/ogg",
        "audio/aac",
        "audio/pcm",
    ]
    assert normalize_format("MP3") == "mp3" and normalize_format("pcm") == "pcm16"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_format("wma")
    with pytest.raises(ValueError, match="mono"):
        encode_audio(np.zeros((10, 2), np.float32), 24_000, "wav")


def test_encoded_files_are_recognised_by_their_bytes():
    kinds = {
        fmt: sniff_format(encode_audio(tone(0.2, 24_000), 24_000, fmt)) for fmt in ("wav", "mp3", "flac", "opus", "aac")
    }
    assert {fmt: s.name for fmt, s in kinds.items()} == {
        "wav": "wav",
        "mp3": "mp3",
        "flac": "flac",
        "opus": "ogg",
        "aac": "aac",
    }


def test_empty_clip_encodes_to_a_valid_empty_file():
    for fmt in ("wav", "flac", "mp3", "opus", "aac"):
        data = encode_audio(np.zeros(0, np.float32), 24_000, fmt)
        assert isinstance(data, bytes)
    assert soundfile.info(io.BytesIO(encode_audio(np.zeros(0, np.float32), 24_000, "wav"))).frames == 0
