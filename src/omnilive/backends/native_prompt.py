"""The Qwen processor step: chat messages with media → prompt ids + encoder inputs.

    messages ──chat template──▶ text with one image / video (/ audio) placeholder per item
             ──tokenizer──▶ ids ──expand each placeholder to its encoder's row count──▶ prompt ids
    media ──qwen_preprocess──▶ patches / log-mel (ThinkerMedia, in prompt order)

`QwenProcessor` is the expansion both families share, as transformers' Qwen2_5OmniProcessor
and Qwen2_5_VLProcessor do it: an image or video becomes one placeholder per 2x2 merge unit,
an audio one per 40 ms. `OmniProcessor` adds Qwen2.5-Omni's speech system prompt and its
videos with sound: <|audio_bos|> + video and audio placeholders interleaved in 2 s chunks +
<|audio_eos|> (inside the template's <|vision_bos|> … <|vision_eos|>), the audio joining the
audio inputs at that place. Qwen2.5-VL's processor (native_vl) hears nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer

from omnilive.backends.tool_prompt import template_entry, with_tools
from omnilive.types import (
    AudioInput,
    EngineError,
    ImageInput,
    Message,
    Tool,
    VideoInput,
)
from omnilive.media.qwen_preprocess import (
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    ImagePreprocessConfig,
    VisionPatches,
    log_mel_spectrogram,
    preprocess_image,
    preprocess_video,
)
from omnilive.model.rope_index import MRopeLayout, video_with_audio_placeholders
from omnilive.model.thinker import ThinkerConfig, ThinkerMedia, audio_placeholder_count
from omnilive.model.tokenizer import Tokenizer, TokenizerInfo

# Qwen2.5-Omni speaks only under this system prompt (its model card says so)
SPEECH_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)

# Qwen2.5-Omni's own chat template, for a checkpoint directory that lacks one
FALLBACK_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
VIDEO_FPS_DEFAULT = 2.0


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def chat_template_of(directory: Path, fallback: str = FALLBACK_CHAT_TEMPLATE) -> str:
    """The checkpoint's chat template: chat_template.jinja, chat_template.json, then
    tokenizer_config.json; `fallback` (Qwen2.5-Omni's own by default) when none has one."""
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        template = read_json(directory / name).get("chat_template")
        if isinstance(template, str) and template:
            return template
    return fallback


def load_omni_tokenizer(directory: str | Path, fallback_template: str = FALLBACK_CHAT_TEMPLATE) -> Tokenizer:
    """The checkpoint's tokenizer.json with its chat template and stop tokens."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        raise FileNotFoundError(f"{directory} has no tokenizer.json")
    backend = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    eos = read_json(directory / "tokenizer_config.json").get("eos_token") or "<|im_end|>"
    eos = eos["content"] if isinstance(eos, dict) else eos
    stops = [token_id for token in STOP_TOKENS if (token_id := backend.token_to_id(token)) is not None]
    info = TokenizerInfo(chat_template=chat_template_of(directory, fallback_template),
                         eos_token_id=backend.token_to_id(eos), extra_stop_token_ids=stops)
    return Tokenizer(backend, info)


@dataclass(frozen=True)
class VisualPreprocessing:
    """How a checkpoint resizes images (preprocessor_config.json) and video frames:
    video_preprocessor_config.json when there is one, else qwen-vl-utils' / qwen-omni-utils'
    per-frame range (both 128..768 merge units)."""

    image: ImagePreprocessConfig
    video_min_pixels: int = VIDEO_MIN_PIXELS
    video_max_pixels: int = VIDEO_MAX_PIXELS

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> VisualPreprocessing:
        directory = Path(directory)
        image = ImagePreprocessConfig.from_dict(read_json(directory / "preprocessor_config.json"))
        video = read_json(directory / "video_preprocessor_config.json")
        size = video.get("size") or {}
        return cls(image, video.get("min_pixels", size.get("shortest_edge", VIDEO_MIN_PIXELS)),
                   video.get("max_pixels", size.get("longest_edge", VIDEO_MAX_PIXELS)))


@dataclass(frozen=True)
class MediaTokens:
    """The placeholder ids a processor expands; audio ones only for a model that hears."""

    image: int
    video: int
    audio: int | None = None  # None: the model takes no audio
    audio_start: int | None = None
    audio_end: int | None = None
    mrope_layout: MRopeLayout | None = None  # where a video's own audio interleaves (Omni)

    @property
    def hears(self) -> bool:
        return self.audio is not None


@dataclass(frozen=True)
class OmniPrompt:
    """One request's thinker input: token ids with expanded placeholders, and the encoder inputs."""

    input_ids: list[int]
    media: ThinkerMedia
    image_tokens: int  # placeholders of images and videos
    audio_tokens: int  # placeholders of audios, a video's own audio included

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class CollectedMedia:
    """Media in prompt order while the placeholders are expanded."""

    images: list[VisionPatches]
    videos: list[VisionPatches]
    video_seconds: list[float]
    mels: list[torch.Tensor]


class QwenProcessor:
    """Template, tokenise, expand placeholders, preprocess media: what every Qwen family shares.
    Subclasses decide the template's input (`chat`)."""

    def __init__(self, tokenizer: Tokenizer, tokens: MediaTokens, visual: VisualPreprocessing,
                 audio_bins: int = 128, max_prompt_tokens: int | None = None):
        """max_prompt_tokens: the model's context; media past it are refused before more of
        them are preprocessed."""
        self.tokenizer, self.tokens, self.visual, self.audio_bins = tokenizer, tokens, visual, audio_bins
        self.max_prompt_tokens = max_prompt_tokens

    @property
    def image(self) -> ImagePreprocessConfig:
        return self.visual.image

    @property
    def input_modalities(self) -> tuple[str, ...]:
        """What a model card lists as this model's inputs."""
        return ("text", "image", "audio", "video") if self.tokens.hears else ("text", "image", "video")

    def chat(self, messages: Sequence[Message], speak: bool) -> list[dict]:
        """Template input: content parts as Qwen's processors take them."""
        return [template_entry(m, [_part_dict(p) for p in m.content]) for m in messages]

    def build(self, messages: Sequence[Message], speak: bool = False,
              template_kwargs: Mapping[str, Any] | None = None, tools: Sequence[Tool] = ()) -> OmniPrompt:
        """template_kwargs: extra variables of the chat template (a request's chat_template_kwargs);
        tools: the functions the model may call."""
        messages, tool_variables = with_tools(messages, tools, self.tokenizer.info.chat_template)
        chat = self.chat(messages, speak)
        items = [part["media"] for message in chat for part in message["content"] if "media" in part]
        text = self.tokenizer.render_chat(chat, add_generation_prompt=True, **tool_variables,
                                          **dict(template_kwargs or {}))
        ids = self.tokenizer.encode(text)
        return self._expand(ids, items)

    def _expand(self, ids: list[int], items: list[ImageInput | AudioInput | VideoInput]) -> OmniPrompt:
        """Replace the template's one placeholder per item by its full run, collecting the media."""
        t = self.tokens
        kinds = {t.image: ImageInput, t.video: VideoInput} | ({t.audio: AudioInput} if t.hears else {})
        if [kinds[token] for token in ids if token in kinds] != [type(item) for item in items]:
            raise EngineError("the prompt's media placeholders do not match its media (media token text such "
                              "as <|IMAGE|> or <|image_pad|> cannot appear in messages)", param="messages")
        collected = CollectedMedia([], [], [], [])
        out: list[int] = []
        image_tokens = audio_tokens = 0
        media = iter(items)
        for token in ids:
            if token not in kinds:
                out.append(token)
                continue
            item = next(media)
            if isinstance(item, ImageInput):
                count = self._add_image(item, collected)
                out += [token] * count
                image_tokens += count
            elif isinstance(item, AudioInput):
                count = self._add_audio(item, collected)
                out += [token] * count
                audio_tokens += count
            else:
                expanded, video_count, audio_count = self._add_video(item, collected)
                out += expanded
                image_tokens, audio_tokens = image_tokens + video_count, audio_tokens + audio_count
            if self.max_prompt_tokens is not None and len(out) >= self.max_prompt_tokens:
                raise EngineError(f"The prompt's media take more than this model's context of {self.max_prompt_tokens} "
                                  "tokens; send fewer or smaller images and videos.", param="messages",
                                  code="context_length_exceeded")
        return OmniPrompt(out, self._media(collected), image_tokens, audio_tokens)

    def _add_image(self, image: ImageInput, collected: CollectedMedia) -> int:
        try:
            patches = preprocess_image(image.image, self.image)
        except ValueError as error:  # e.g. an aspect ratio past 200:1
            raise EngineError(f"an image cannot be used: {error}", param="messages") from None
        collected.images.append(patches)
        return patches.token_counts(self.image.merge_size)[0]

    def _add_audio(self, audio: AudioInput, collected: CollectedMedia) -> int:
        if len(audio.samples) == 0:
            raise EngineError("an audio input is empty", param="messages")
        mel = log_mel_spectrogram(audio.samples, n_mels=self.audio_bins)
        collected.mels.append(mel)
        return audio_placeholder_count(mel.shape[1])

    def _add_video(self, video: VideoInput, collected: CollectedMedia) -> tuple[list[int], int, int]:
        """A video's placeholder ids, its vision token count and its audio token count. Its
        frames are the decoder's, already sampled at `video.fps`; a temporal patch of
        temporal_patch_size frames spans temporal_patch_size / fps seconds (second_per_grid_ts)."""
        t, v = self.tokens, self.visual
        if not video.frames:
            raise EngineError("a video has no frames", param="messages")
        try:
            patches = preprocess_video(video.frames, self.image, v.video_min_pixels, v.video_max_pixels)
        except ValueError as error:
            raise EngineError(f"a video cannot be used: {error}", param="messages") from None
        seconds = self.image.temporal_patch_size / (video.fps if video.fps and video.fps > 0 else VIDEO_FPS_DEFAULT)
        collected.videos.append(patches)
        collected.video_seconds.append(seconds)
        vision_count = patches.token_counts(self.image.merge_size)[0]
        # a model that cannot hear sees a video's frames only, as Qwen2.5-VL does
        if not t.hears or video.audio is None or len(video.audio.samples) == 0:
            return [t.video] * vision_count, vision_count, 0
        audio_count = self._add_audio(video.audio, collected)
        interleaved = video_with_audio_placeholders(patches.grid_thw[0].tolist(), seconds, audio_count, t.mrope_layout)
        return [t.audio_start, *interleaved, t.audio_end], vision_count, audio_count

    def _media(self, collected: CollectedMedia) -> ThinkerMedia:
        images = VisionPatches.concat(collected.images) if collected.images else None
        videos = VisionPatches.concat(collected.videos) if collected.videos else None
        mels = collected.mels
        return ThinkerMedia(
            images=images,
            videos=videos,
            video_seconds_per_grid=tuple(collected.video_seconds),
            audio_mel=torch.cat(mels, dim=1) if mels else None,
            audio_frames=torch.tensor([m.shape[1] for m in mels]) if mels else None,
        )


class OmniProcessor(QwenProcessor):
    """Qwen2.5-Omni's processor: hears audio, and speaks only under SPEECH_SYSTEM_PROMPT."""

    def __init__(self, tokenizer: Tokenizer, thinker: ThinkerConfig, image: ImagePreprocessConfig,
                 video_min_pixels: int = VIDEO_MIN_PIXELS, video_max_pixels: int = VIDEO_MAX_PIXELS):
        tokens = MediaTokens(thinker.image_token_index, thinker.video_token_index, thinker.audio_token_index,
                             thinker.audio_start_token_id, thinker.audio_end_token_id, thinker.mrope_layout)
        super().__init__(tokenizer, tokens, VisualPreprocessing(image, video_min_pixels, video_max_pixels),
                         thinker.audio_config.num_mel_bins)
        self.thinker = thinker

    @classmethod
    def from_checkpoint(cls, directory: str | Path, tokenizer: Tokenizer, thinker: ThinkerConfig) -> OmniProcessor:
        visual = VisualPreprocessing.from_checkpoint(directory)
        return cls(tokenizer, thinker, visual.image, visual.video_min_pixels, visual.video_max_pixels)

    def chat(self, messages: Sequence[Message], speak: bool) -> list[dict]:
        """Speech needs SPEECH_SYSTEM_PROMPT as the system prompt; the caller's own system
        text follows it."""
        chat = super().chat(messages, speak)
        if chat and chat[0]["role"] == "system":
            own = messages[0].text.strip()
            if speak and not own.startswith(SPEECH_SYSTEM_PROMPT):
                chat[0]["content"] = [{"type": "text", "text": SPEECH_SYSTEM_PROMPT + (f"\n{own}" if own else "")}]
        else:
            chat.insert(0, {"role": "system", "content": [{"type": "text", "text": SPEECH_SYSTEM_PROMPT}]})
        return chat


def _part_dict(part) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    kind = {ImageInput: "image", AudioInput: "audio", VideoInput: "video"}[type(part)]
    return {"type": kind, "media": part}  # the template reads the type; `build` collects the media
