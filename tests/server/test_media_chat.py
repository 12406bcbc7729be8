"""Chat with image and video input sent inline as data: URLs (the model reads them via OCR)."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.server.test_files import text_image

pytestmark = pytest.mark.slow


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def text_video(text: str, seconds: float = 2.0, fps: int = 10) -> bytes:
    """An H.264 mp4 whose frames show `text`, with a quiet 440 Hz tone as its audio track."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 640, 160, "yuv420p"
        audio = container.add_stream("aac", rate=16_000)
        audio.layout = "mono"
        image = Image.new("RGB", (640, 160), "white")
        ImageDraw.Draw(image).text((24, 40), text, fill="black", font=ImageFont.load_default(size=64))
        for _ in range(int(seconds * fps)):
            container.mux(video.encode(av.VideoFrame.from_image(image)))
        container.mux(video.encode())
        tone = (0.05 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16_000)) / 16_000)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
        frame.sample_rate = 16_000
        container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return buffer.getvalue()


def ask(client, model_id, part: dict, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}, part]}]
    response = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=30)
    return response.choices[0].message.content


def test_image_text_is_read_back(client, model_id):
    part = {"type": "image_url", "image_url": {"url": data_url("image/png", text_image("PLUM 3852")), "detail": "high"}}
    answer = ask(client, model_id, part, "What text is written in this image? Reply with the text only.")
    assert "3852" in answer


def test_video_text_is_read_back(client, model_id):
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", text_video("FIG 6194"))}}
    answer = ask(client, model_id, part, "What text is shown in this video? Reply with the text only.")
    assert "6194" in answer
