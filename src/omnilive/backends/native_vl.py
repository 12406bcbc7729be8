"""Qwen2.5-VL checkpoints behind the native engine: it sees images and videos, reads and writes text.

    omnilive serve --model /models/Qwen2.5-VL-7B-Instruct     (text out; no voices, no audio in)

`load_omni` hands a directory whose config.json says `model_type: qwen2_5_vl` to `load_vl`,
which returns the same OmniModel the Omni path does, with no talker: the engine runs its
`Qwen2_5_VL` exactly like an Omni thinker (`prepare_prompt` → ThinkerPrompt).

The processor is Qwen2.5-VL's (transformers' Qwen2_5_VLProcessor): the checkpoint's chat
template, whose default system prompt is "You are a helpful assistant."; one <|image_pad|> /
<|video_pad|> per merge unit of an image's / video's patch grid; images resized within
preprocessor_config.json's min/max pixels, video frames within the video range
(VisualPreprocessing); a video's frames are the decoder's, sampled at 2 fps as Qwen's processor
samples them, and a temporal patch spans `second_per_grid_ts` = temporal_patch_size / fps seconds.
Audio, and a video's own audio track, the model cannot take: audio inputs are refused, the
track is left out.

Qwen3-VL (dense and MoE, Instruct and Thinking) goes the same way with `Qwen3VLProcessor`:
its image patches are 16 pixels; a video's frames are resized together (the pixel budget
of video_preprocessor_config.json covers all frames), and the template's
`<|vision_start|><|video_pad|><|vision_end|>` becomes, per temporal patch,
"<t seconds><|vision_start|>" + its placeholders + "<|vision_end|>", t the mean time of its
frames: the layout Qwen3-VL was trained on, as Qwen's processor (transformers up to 4.57),
vLLM and SGLang write it. (transformers 5.23 replaces the `<|video_pad|>` alone and keeps the
template's markers around the frame groups.) A Thinking checkpoint's template opens the think
block; the engine splits the reasoning off as for Qwen3.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from omnilive.backends.registry import OmniModel
from omnilive.backends.native_prompt import (
    VIDEO_FPS_DEFAULT,
    CollectedMedia,
    MediaTokens,
    OmniPrompt,
    QwenProcessor,
    VisualPreprocessing,
    load_omni_tokenizer,
    read_json,
)
from omnilive.media.qwen_preprocess import preprocess_video, video_frame_size
from omnilive.types import AudioInput, EngineError, Message, VideoInput
from omnilive.model.qwen2_5_vl import VLConfig, load_qwen2_5_vl
from omnilive.model.qwen2_vl import load_qwen2_vl
from omnilive.model.qwen3_vl import Qwen3VLConfig, load_qwen3_vl
from omnilive.model.tokenizer import Tokenizer

FAMILY = "Qwen2.5-VL"

# Qwen2.5-VL-Instruct's chat template (its chat_template.json), for a directory that lacks one
VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class VLProcessor(QwenProcessor):
    """Qwen2.5-VL's (and Qwen2-VL's) processor: images and videos, no audio; the template's own
    system prompt."""

    family = FAMILY

    @classmethod
    def from_checkpoint(cls, directory: str | Path, tokenizer: Tokenizer, config: VLConfig,
                        family: str = FAMILY) -> VLProcessor:
        tokens = MediaTokens(image=config.image_token_id, video=config.video_token_id)
        processor = cls(tokenizer, tokens, VisualPreprocessing.from_checkpoint(directory),
                        max_prompt_tokens=config.text_config.max_position_embeddings)
        processor.family = family
        return processor

    def chat(self, messages: Sequence[Message], speak: bool) -> list[dict]:
        if any(isinstance(part, AudioInput) for message in messages for part in message.content):
            raise EngineError(f"{self.family} cannot hear: send images, videos and text, not audio",
                              param="messages", code="unsupported_input")
        return super().chat(messages, speak)


# Qwen3-VL-Instruct's chat template in short (no default system prompt, unlike Qwen2.5-VL's), for
# a directory that lacks one; a Thinking checkpoint ships its own, which opens the think block
QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL's video processor defaults: the pixels of all frames of a video together
QWEN3_VIDEO_MIN_PIXELS = 128 * 32 * 32
QWEN3_VIDEO_MAX_PIXELS = 768 * 32 * 32


class Qwen3VLProcessor(VLProcessor):
    """Qwen3-VL's processor: VLProcessor's images; videos resized as a whole and written frame
    group by frame group with their timestamps."""

    family = "Qwen3-VL"

    def __init__(self, tokenizer: Tokenizer, config: Qwen3VLConfig, visual: VisualPreprocessing, family: str):
        tokens = MediaTokens(image=config.image_token_id, video=config.video_token_id)
        super().__init__(tokenizer, tokens, visual, max_prompt_tokens=config.text_config.max_position_embeddings)
        self.family = family
        self.vision_start, self.vision_end = config.vision_start_token_id, config.vision_end_token_id

    @classmethod
    def from_checkpoint(cls, directory: str | Path, tokenizer: Tokenizer, config: Qwen3VLConfig,
                        family: str = "Qwen3-VL") -> Qwen3VLProcessor:
        visual = VisualPreprocessing.from_checkpoint(directory)
        size = read_json(Path(directory) / "video_preprocessor_config.json").get("size") or {}
        visual = VisualPreprocessing(visual.image, size.get("shortest_edge", QWEN3_VIDEO_MIN_PIXELS),
                                     size.get("longest_edge", QWEN3_VIDEO_MAX_PIXELS))
        return cls(tokenizer, config, visual, family)

    def _expand(self, ids: list[int], items: list) -> OmniPrompt:
        """The template's markers around each video go: its frame groups bring their own."""
        marked = [self.vision_start, self.tokens.video, self.vision_end]
        unmarked, i = [], 0
        while i < len(ids):
            if ids[i : i + 3] == marked:
                unmarked.append(self.tokens.video)
                i += 3
            else:
                unmarked.append(ids[i])
                i += 1
        return super()._expand(unmarked, items)

    def _add_video(self, video: VideoInput, collected: CollectedMedia) -> tuple[list[int], int, int]:
        """A video's placeholder ids (timestamps, markers, placeholders per temporal patch) and
        its placeholder count. Frame i of a video decoded at `fps` is at i / fps seconds."""
        if not video.frames:
            raise EngineError("a video has no frames", param="messages")
        config, frames = self.image, video.frames
        try:
            size = video_frame_size(len(frames), frames[0].height, frames[0].width, config.factor,
                                    config.temporal_patch_size, self.visual.video_min_pixels,
                                    self.visual.video_max_pixels)
            patches = preprocess_video(frames, config, size=size)
        except ValueError as error:
            raise EngineError(f"a video cannot be used: {error}", param="messages") from None
        fps = video.fps if video.fps and video.fps > 0 else VIDEO_FPS_DEFAULT
        collected.videos.append(patches)
        collected.video_seconds.append(config.temporal_patch_size / fps)
        t, h, w = patches.grid_thw[0].tolist()
        per_frame = h * w // config.merge_size**2
        ids: list[int] = []
        for seconds in frame_group_seconds(len(frames), fps, config.temporal_patch_size):
            ids += self.tokenizer.encode(f"<{seconds:.1f} seconds>")
            ids += [self.vision_start, *[self.tokens.video] * per_frame, self.vision_end]
        return ids, t * per_frame, 0


def frame_group_seconds(num_frames: int, fps: float, temporal_patch_size: int) -> list[float]:
    """The time of each temporal patch: the mean of its first and last frame's time (the last
    frame repeated to fill the final patch), as Qwen3-VL's processor computes it."""
    times = [index / fps for index in range(num_frames)]
    times += [times[-1]] * (-num_frames % temporal_patch_size)
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def load_vl(directory: str | Path, dtype: torch.dtype, device: str = "cpu") -> OmniModel:
    """Model, tokenizer and processor of a Qwen2.5-VL checkpoint directory, as an OmniModel
    without a talker (text out only)."""
    return _vl_model(Path(directory), load_qwen2_5_vl(directory, dtype, device), FAMILY)


def load_qwen2_vl_family(directory: str | Path, dtype: torch.dtype, device: str = "cpu") -> OmniModel:
    """The same for a Qwen2-VL checkpoint (QVQ-72B-Preview is one): Qwen2-VL's ViT, the same
    processor and template (Qwen2-VL-Instruct's is Qwen2.5-VL's)."""
    return _vl_model(Path(directory), load_qwen2_vl(directory, dtype, device), "Qwen2-VL")


def load_qwen3_vl_family(directory: str | Path, dtype: torch.dtype, device: str = "cpu") -> OmniModel:
    """A Qwen3-VL or Qwen3-VL-MoE checkpoint (Instruct or Thinking), with Qwen3VLProcessor."""
    directory = Path(directory)
    model = load_qwen3_vl(directory, dtype, device)
    family = "Qwen3-VL-MoE" if model.vl_config.model_type == "qwen3_vl_moe" else "Qwen3-VL"
    tokenizer = load_omni_tokenizer(directory, fallback_template=QWEN3_VL_CHAT_TEMPLATE)
    processor = Qwen3VLProcessor.from_checkpoint(directory, tokenizer, model.vl_config, family)
    return OmniModel(thinker=model, tokenizer=tokenizer, processor=processor, talker=None, family=family)


def _vl_model(directory: Path, model, family: str) -> OmniModel:
    tokenizer = load_omni_tokenizer(directory, fallback_template=VL_CHAT_TEMPLATE)
    processor = VLProcessor.from_checkpoint(directory, tokenizer, model.vl_config, family)
    return OmniModel(thinker=model, tokenizer=tokenizer, processor=processor, talker=None, family=family)
