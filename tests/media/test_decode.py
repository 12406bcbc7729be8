"""Decoding real files of every supported kind, and refusing bad ones with a MediaError."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import shutil
import struct
import subprocess
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from omnilive.media.data_url import decode_base64, load_media_url, parse_data_url
from omnilive.media.decode import decode_audio, decode_image, decode_video, sniff_format
from omnilive.media.encode import encode_audio, pcm16_bytes
from omnilive.media.errors import MediaError
from omnilive.media.limits import MediaLimits


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def pyav_audio(container_format: str, codec: str, samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def make_video(
    seconds: float = 3.0,
    fps: int = 10,
    size=(320, 240),
    container_format: str = "mp4",
    video_codec: str = "libx264",
    audio_codec: str | None = "aac",
) -> bytes:
    """A white bar that grows left to right (frame brightness = time), plus a 440 Hz tone."""
    buffer = io.BytesIO()
    count = int(seconds * fps)
    with av.open(buffer, "w", format=container_format) as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = container.add_stream(audio_codec, rate=48_000) if audio_codec else None
        if audio is not None:
            audio.layout = "mono"
        for i in range(count):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[:, : i * size[0] // count] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            frame = av.AudioFrame.from_ndarray(tone(seconds, 48_000).reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = 48_000
            for packet in [*audio.encode(frame), *audio.encode(None)]:
                container.mux(packet)
    return buffer.getvalue()


AUDIO_1S = tone(1.0, 24_000)
ENCODED_AUDIO = {
    "wav": lambda: encode_audio(AUDIO_1S, 24_000, "wav"),
    "mp3": lambda: encode_audio(AUDIO_1S, 24_000, "mp3"),
    "flac": lambda: encode_audio(AUDIO_1S, 24_000, "flac"),
    "ogg-opus": lambda: encode_audio(AUDIO_1S, 24_000, "opus"),
    "aac-adts": lambda: encode_audio(AUDIO_1S, 24_000, "aac"),
    "m4a": lambda: pyav_audio("ipod", "aac", tone(1.0, 44_100), 44_100),
    "webm-opus": lambda: pyav_audio("webm", "libopus", tone(1.0, 48_000), 48_000),
}


# audio


@pytest.mark.parametrize("name", list(ENCODED_AUDIO))
def test_every_audio_format_decodes_to_16k_mono_with_the_tone_intact(name):
    audio = decode_audio(ENCODED_AUDIO[name]())
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.duration_s == pytest.approx(1.0, abs=0.09)  # raw ADTS cannot mark its 2 frames of padding
    assert peak_hz(audio.samples) == pytest.approx(440, abs=3)
    assert 0.3 < np.abs(audio.samples).max() <= 1.0


def test_resampling_keeps_pitch_and_level_from_48k_stereo():
    left = tone(2.0, 48_000, freq=440, amplitude=0.4)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([left, left], axis=1), 48_000, format="WAV", subtype="FLOAT")
    audio = decode_audio(buffer.getvalue())
    assert len(audio.samples) == pytest.approx(32_000, abs=32)
    assert peak_hz(audio.samples) == pytest.approx(440, abs=1)
    rms = float(np.sqrt(np.mean(audio.samples[1000:-1000] ** 2)))
    assert 0.15 < rms < 0.45  # a 0.4 sine has rms 0.28; stereo→mono must not double or vanish


def test_raw_pcm16_needs_its_format_and_defaults_to_24k():
    raw = pcm16_bytes(tone(1.0, 24_000, freq=1000))
    with pytest.raises(MediaError) as error:
        decode_audio(raw)
    assert error.value.code == "unsupported_format"
    audio = decode_audio(raw, format_hint="pcm16")
    assert audio.duration_s == pytest.approx(1.0, abs=0.01)
    assert peak_hz(audio.samples) == pytest.approx(1000, abs=2)
    at_8k = decode_audio(pcm16_bytes(tone(1.0, 8000, freq=500)), format_hint="pcm16", sample_rate=8000)
    assert at_8k.duration_s == pytest.approx(1.0, abs=0.01) and peak_hz(at_8k.samples) == pytest.approx(500, abs=2)
    with pytest.raises(MediaError, match="even number"):
        decode_audio(raw[:-1], format_hint="pcm16")


def test_g711_ulaw_at_8k():
    context = av.CodecContext.create("pcm_mulaw", "w")
    context.sample_rate, context.layout, context.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(
        (tone(1.0, 8000, freq=300) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = 8000
    ulaw = b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])
    audio = decode_audio(ulaw, format_hint="g711_ulaw")
    assert audio.duration_s == pytest.approx(1.0, abs=0.01) and peak_hz(audio.samples) == pytest.approx(300, abs=2)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_real_speech_from_espeak_ng(tmp_path):
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "What time is it in Paris?"], check=True, timeout=30)
    assert soundfile.info(str(path)).samplerate != 16_000  # so this really resamples
    audio = decode_audio(path.read_bytes(), format_hint="wav")
    assert 1.0 < audio.duration_s < 4.0
    assert float(np.sqrt(np.mean(audio.samples**2))) > 0.02


def test_audio_limits_are_enforced():
    wav = encode_audio(tone(2.0, 16_000), 16_000, "wav")
    with pytest.raises(MediaError) as error:
        decode_audio(wav, MediaLimits(max_audio_seconds=1.0))
    assert error.value.code == "too_long" and error.value.http_status == 400
    with pytest.raises(MediaError) as error:
        decode_audio(pcm16_bytes(tone(2.0, 24_000)), MediaLimits(max_audio_seconds=1.0), format_hint="pcm16")
    assert error.value.code == "too_long"
    with pytest.raises(MediaError) as error:
        decode_audio(wav, MediaLimits(max_bytes=1000))
    assert error.value.code == "media_too_large" and error.value.http_status == 413


def test_empty_audio_is_refused():
    for data in (b"", encode_audio(np.zeros(0, np.float32), 16_000, "wav")):
        with pytest.raises(MediaError) as error:
            decode_audio(data)
        assert error.value.code == "empty_media"


def test_audio_track_of_a_video_decodes_as_audio():
    audio = decode_audio(make_video(seconds=2.0))
    assert audio.duration_s == pytest.approx(2.0, abs=0.06) and peak_hz(audio.samples) == pytest.approx(440, abs=3)


def test_image_sent_as_audio_is_refused():
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(MediaError, match="image") as error:
        decode_audio(png.getvalue())
    assert error.value.code == "unsupported_format"


# garbage in: a MediaError or a valid result, never another exception, never a hang


def _decodes_or_refuses(decoder, data: bytes) -> None:
    try:
        decoder(data)
    except MediaError as error:
        assert error.code and error.message


@pytest.mark.parametrize("decoder", [decode_audio, decode_video, decode_image])
def test_random_bytes_are_refused(decoder):
    rng = random.Random(1234)
    for size in (1, 7, 100, 4096, 65_536):
        with pytest.raises(MediaError):
            decoder(rng.randbytes(size))


def test_truncated_and_corrupted_files_never_escape_as_other_errors():
    rng = random.Random(99)
    samples = {name: make() for name, make in ENCODED_AUDIO.items()}
    samples["mp4-video"] = make_video(seconds=1.0)
    samples["webm-video"] = make_video(
        seconds=1.0, container_format="webm", video_codec="libvpx-vp9", audio_codec="libopus"
    )
    for data in samples.values():
        for cut in (len(data) // 10, len(data) // 2, len(data) - 7):
            for decoder in (decode_audio, decode_video):
                _decodes_or_refuses(decoder, data[:cut])
        corrupted = bytearray(data)
        for _ in range(20):  # flip bytes after the header: the signature still matches
            corrupted[rng.randrange(16, len(data))] = rng.randrange(256)
        _decodes_or_refuses(decode_audio, bytes(corrupted))
        _decodes_or_refuses(decode_video, bytes(corrupted))
        # a valid signature followed by noise
        _decodes_or_refuses(decode_audio, data[:16] + rng.randbytes(3000))


# video


def test_video_frames_are_sampled_at_2_fps_with_the_audio_track():
    video = decode_video(make_video(seconds=3.0, fps=10))
    assert video.fps == 2.0 and len(video.frames) == 6
    assert all(f.mode == "RGB" and f.size == (320, 240) for f in video.frames)
    # the bar grows with time, so frame k (at k/2 s) is k/2/3 white
    brightness = [np.asarray(f)[:, :, 0].mean() / 255 for f in video.frames]
    assert brightness == pytest.approx([k / 6 for k in range(6)], abs=0.03)
    assert video.audio is not None and video.audio.duration_s == pytest.approx(3.0, abs=0.06)
    assert peak_hz(video.audio.samples) == pytest.approx(440, abs=3)


def test_webm_video_without_audio():
    video = decode_video(make_video(seconds=2.0, container_format="webm", video_codec="libvpx-vp9", audio_codec=None))
    assert len(video.frames) == 4 and video.audio is None


def test_long_video_gets_fewer_frames_and_small_frames_stay_in_the_pixel_budget():
    data = make_video(seconds=3.0, fps=10, size=(640, 480))
    video = decode_video(data, MediaLimits(max_video_frames=4, video_frame_max_pixels=20_000))
    assert len(video.frames) == 4 and video.fps == pytest.approx(4 / 3, abs=0.01)
    assert all(f.width * f.height <= 20_000 for f in video.frames)
    assert video.frames[0].width / video.frames[0].height == pytest.approx(4 / 3, abs=0.05)


def test_video_limits_and_wrong_kinds():
    with pytest.raises(MediaError) as error:
        decode_video(make_video(seconds=3.0), MediaLimits(max_video_seconds=1.0))
    assert error.value.code == "too_long"
    with pytest.raises(MediaError) as error:
        decode_video(ENCODED_AUDIO["m4a"]())  # an mp4 holding only audio
    assert error.value.code == "invalid_video"
    with pytest.raises(MediaError) as error:
        decode_video(ENCODED_AUDIO["wav"]())
    assert error.value.code == "unsupported_format"


# images


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_transparent_png_lands_on_white():
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 10, 20))
    decoded = decode_image(png_bytes(image)).image
    assert decoded.mode == "RGB" and decoded.size == (40, 20)
    assert decoded.getpixel((30, 10)) == (255, 255, 255) and decoded.getpixel((5, 10)) == (0, 0, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).image.size == (30, 60)


def test_large_images_are_downscaled_and_huge_ones_refused():
    wide = png_bytes(Image.new("RGB", (3000, 1000), (0, 128, 0)))
    assert decode_image(wide).image.size == (2048, 683)
    with pytest.raises(MediaError) as error:
        decode_image(wide, MediaLimits(max_image_pixels=1_000_000))
    assert error.value.code == "media_too_large" and error.value.http_status == 413


def test_decompression_bomb_header_is_refused_without_decoding():
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)  # claims 3.6 Gpx of RGB
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(MediaError) as error:
        decode_image(bomb)
    assert error.value.code == "media_too_large"


def test_16_bit_grey_png_keeps_its_contrast():
    ramp = np.tile(np.linspace(0, 4000, 64, dtype=np.uint16), (8, 1))  # dim 16-bit values
    decoded = np.asarray(decode_image(png_bytes(Image.fromarray(ramp))).image)
    assert decoded[:, 0, 0].max() < 10 and decoded[:, -1, 0].min() > 245


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("P", (10, 10), i) for i in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue()).image.size == (10, 10)


def test_bad_images_are_refused_with_clear_codes():
    jpeg = io.BytesIO()
    Image.new("RGB", (200, 200), (10, 200, 30)).save(jpeg, format="JPEG")
    for data, code in [
        (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "invalid_image"),  # truncated
        (png_bytes(Image.new("RGB", (50, 50)))[:60], "invalid_image"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(100), "unsupported_format"),
        (b"not an image at all", "unsupported_format"),
        (b"", "empty_media"),
    ]:
        with pytest.raises(MediaError) as error:
            decode_image(data)
        assert error.value.code == code, data[:20]


def test_sniffing_ignores_declared_types():
    assert sniff_format(ENCODED_AUDIO["wav"]()).name == "wav"
    assert sniff_format(ENCODED_AUDIO["mp3"]()).name == "mp3"
    assert sniff_format(ENCODED_AUDIO["aac-adts"]()).name == "aac"
    assert sniff_format(ENCODED_AUDIO["webm-opus"]()).name == "matroska"
    assert sniff_format(png_bytes(Image.new("RGB", (2, 2)))).kind == "image"
    assert sniff_format(b"hello world") is None


# data URLs and base64


def test_data_urls():
    wav = ENCODED_AUDIO["wav"]()
    mime, data = parse_data_url("data:Audio/WAV;base64," + base64.b64encode(wav).decode())
    assert mime == "audio/wav" and data == wav
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode().rstrip("=")
    assert parse_data_url(f"data:application/octet-stream;base64,{urlsafe}")[1] == b"\xfb\xff\xfe"
    text = base64.b64encode(wav[:300]).decode()  # 400 characters
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64(wrapped) == wav[:300]
    assert parse_data_url("data:text/plain,hello%20world") == ("text/plain", b"hello world")
    assert parse_data_url("data:;base64,AAEC") == (None, b"\x00\x01\x02")


def test_bad_data_urls():
    cases = [
        ("data:image/png;base64", "invalid_data_url"),  # no comma
        ("data:image/png;base64,@@@@", "invalid_data_url"),
        ("data:image/png;base64,", "empty_media"),
        ("data:nonsense;base64,AAAA", "invalid_data_url"),
        ("https://example.com/cat.png", "invalid_data_url"),  # parse_data_url wants data: only
    ]
    for url, code in cases:
        with pytest.raises(MediaError) as error:
            parse_data_url(url)
        assert error.value.code == code, url


def test_oversized_base64_is_refused_before_decoding():
    text = "A" * 4_000_000  # would decode to 3 MB
    with pytest.raises(MediaError) as error:
        decode_base64(text, max_bytes=1_000_000)
    assert error.value.code == "media_too_large" and "3.0 MB" in error.value.message


def test_remote_urls_are_refused_unless_allowed():
    with pytest.raises(MediaError) as error:
        asyncio.run(load_media_url("https://example.com/cat.png"))
    assert error.value.code == "remote_url_not_allowed"
    with pytest.raises(MediaError) as error:
        asyncio.run(load_media_url("file:///etc/passwd"))
    assert error.value.code == "invalid_data_url"
    mime, data = asyncio.run(load_media_url("data:image/png;base64,iVBORw0KGgo="))
    assert mime == "image/png" and data == b"\x89PNG\r\n\x1a\n"
