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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from omnilive.backends.registry import OmniModel
from omnilive.backends.native_prompt import (
    MediaTokens,
    QwenProcessor,
    VisualPreprocessing,
    load_omni_tokenizer,
)
from omnilive.types import AudioInput, EngineError, Message
from omnilive.model.qwen2_5_vl import VLConfig, load_qwen2_5_vl
from omnilive.model.qwen2_vl import load_qwen2_vl
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


def load_vl(directory: str | Path, dtype: torch.dtype, device: str = "cpu") -> OmniModel:
    """Model, tokenizer and processor of a Qwen2.5-VL checkpoint directory, as an OmniModel
    without a talker (text out only)."""
    return _vl_model(Path(directory), load_qwen2_5_vl(directory, dtype, device), FAMILY)


def load_qwen2_vl_family(directory: str | Path, dtype: torch.dtype, device: str = "cpu") -> OmniModel:
    """The same for a Qwen2-VL checkpoint (QVQ-72B-Preview is one): Qwen2-VL's ViT, the same
    processor and template (Qwen2-VL-Instruct's is Qwen2.5-VL's)."""
    return _vl_model(Path(directory), load_qwen2_vl(directory, dtype, device), "Qwen2-VL")


def _vl_model(directory: Path, model, family: str) -> OmniModel:
    tokenizer = load_omni_tokenizer(directory, fallback_template=VL_CHAT_TEMPLATE)
    processor = VLProcessor.from_checkpoint(directory, tokenizer, model.vl_config, family)
    return OmniModel(thinker=model, tokenizer=tokenizer, processor=processor, talker=None, family=family)
