"""What the NativeBackend tests on tiny checkpoints share: a started backend, the pictures, tones
and clips they send it, running a request to its end, and transformers' greedy reply to the same
prompt."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omnilive.backends.native_omni import NativeBackend
from omnilive.server.settings import Settings
from omnilive.types import AudioInput, EngineRequest, TextDelta, VideoInput


def started_backend(directory: Path, **options) -> Iterator[NativeBackend]:
    """A float32 backend with prefill chunks of 16 tokens (several per prompt), for a fixture to
    `yield from`: started, then stopped once the fixture's scope ends."""
    settings = Settings(model=str(directory), dtype="float32", threads=1, max_context_tokens=1024,
                        prefill_chunk_tokens=16)
    engine = NativeBackend(settings, **options)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.stop())


def picture(seed: int = 0, size: tuple[int, int] = (90, 60)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def tone(seconds: float, hertz: float = 440.0, amplitude: float = 0.2) -> AudioInput:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return AudioInput((amplitude * np.sin(2 * np.pi * hertz * t)).astype(np.float32))


def clip(frames: int = 4, fps: float = 2.0, audio: AudioInput | None = None) -> VideoInput:
    return VideoInput(tuple(picture(10 + i, (84, 56)) for i in range(frames)), fps=fps, audio=audio)


async def collect(engine, request: EngineRequest) -> list:
    return [out async for out in engine.generate(request)]


def run(engine, request: EngineRequest) -> list:
    return asyncio.run(collect(engine, request))


def text_of(outputs) -> str:
    return "".join(out.text for out in outputs if isinstance(out, TextDelta))


def vision_kwargs(media) -> dict:
    """transformers' keyword arguments for a prompt's image and video patches."""
    kwargs = {}
    if media.images is not None:
        kwargs |= {"pixel_values": media.images.pixel_values, "image_grid_thw": media.images.grid_thw}
    if media.videos is not None:
        kwargs |= {"pixel_values_videos": media.videos.pixel_values, "video_grid_thw": media.videos.grid_thw}
    return kwargs


def media_token_types(ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """What transformers reads media positions off: text 0, image 1, video 2."""
    return (ids == image_token_id).long() + 2 * (ids == video_token_id).long()


def reference_greedy(model, engine, ids: torch.Tensor, kwargs: dict, max_tokens: int) -> list[int]:
    """transformers' greedy generate, stopping at the engine's stop tokens: the reply's ids."""
    model.model.rope_deltas = None  # transformers caches it across calls
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=max_tokens,
                                   eos_token_id=sorted(engine.model.tokenizer.stop_token_ids), **kwargs)
    return generated[0, ids.shape[1]:].tolist()
