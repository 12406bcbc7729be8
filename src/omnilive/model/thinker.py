"""The Qwen2.5-Omni thinker: audio and vision encoders feeding a Qwen2 decoder with TMRoPE.

A prompt is token ids with placeholder runs (one <|IMAGE|> / <|VIDEO|> / <|AUDIO|> token per
encoder output row). `prepare_prompt` encodes the media, writes each item's rows over its
placeholders' embeddings and computes the prompt's M-RoPE ids; the decoder then runs like any
other Qwen2 (`forward` with `inputs_embeds` and `rope_positions`), whole or in chunks.
Generated tokens are plain text: their rotary position is cache position + the prompt's delta.

Module names follow the checkpoint's `thinker.*` keys: `audio_tower.`, `visual.`, `model.`
(the language model) and `lm_head.`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self

import torch

from omnilive.media.qwen_preprocess import VisionPatches
from omnilive.model.audio import AudioEncoder, audio_output_tokens
from omnilive.model.omni_config import AudioEncoderConfig, VisionEncoderConfig
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.rope_index import MRopeLayout, PromptPositions, mrope_positions
from omnilive.model.vision import VisionEncoder

# transformers' attribute names for the three placeholder ids; checkpoints spell them *_index
_TOKEN_ALIASES = {
    "image_token_id": "image_token_index",
    "video_token_id": "video_token_index",
    "audio_token_id": "audio_token_index",
}


@dataclass(frozen=True)
class ThinkerConfig:
    """`thinker_config` of a Qwen2.5-Omni config.json, under its own key names."""

    text_config: Qwen2Config
    vision_config: VisionEncoderConfig
    audio_config: AudioEncoderConfig
    audio_token_index: int = 151646
    image_token_index: int = 151655
    video_token_index: int = 151656
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    position_id_per_seconds: int | float = 25
    seconds_per_chunk: int | float = 2
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """From a full Qwen2.5-Omni config.json dict or its `thinker_config`."""
        thinker = dict(raw.get("thinker_config", raw))
        for alias, name in _TOKEN_ALIASES.items():
            if alias in thinker and name not in thinker:
                thinker[name] = thinker[alias]
        tie = bool(thinker.get("tie_word_embeddings", False))
        # transformers ties lm_head by the thinker's flag; the text model is a plain qwen2
        # (q/k/v biases) whatever its model_type says
        text = Qwen2Config.from_dict({**thinker.get("text_config", {}), "model_type": "qwen2",
                                      "attention_bias": True, "tie_word_embeddings": tie})
        if text.mrope_section is None:
            raise ValueError("the thinker's text_config has no rope mrope_section")
        scalar_names = {f.name for f in dataclasses.fields(cls)} - {"text_config", "vision_config", "audio_config"}
        return cls(
            text_config=text,
            vision_config=VisionEncoderConfig.from_dict(thinker.get("vision_config", {})),
            audio_config=AudioEncoderConfig.from_dict(thinker.get("audio_config", {})),
            **{key: value for key, value in thinker.items() if key in scalar_names},
        )

    @property
    def mrope_layout(self) -> MRopeLayout:
        return MRopeLayout(
            image_token_id=self.image_token_index,
            video_token_id=self.video_token_index,
            audio_token_id=self.audio_token_index,
            vision_start_token_id=self.vision_start_token_id,
            audio_start_token_id=self.audio_start_token_id,
            spatial_merge_size=self.vision_config.spatial_merge_size,
            position_id_per_seconds=self.position_id_per_seconds,
            seconds_per_chunk=self.seconds_per_chunk,
        )


@dataclass(frozen=True)
class ThinkerMedia:
    """The encoder inputs of one prompt, each kind in prompt order.

    images / videos: patches from `media.qwen_preprocess`; video_seconds_per_grid: seconds
    per temporal patch of each video (temporal_patch_size / sampled fps); audio_mel
    [128, F_total]: every audio's log-mel frames concatenated (a video's own audio included,
    in prompt order), audio_frames [audios] their frame counts.
    """

    images: VisionPatches | None = None
    videos: VisionPatches | None = None
    video_seconds_per_grid: tuple[float, ...] = ()
    audio_mel: torch.Tensor | None = None
    audio_frames: torch.Tensor | None = None

    def visual_features(self, visual, image_token_id: int, video_token_id: int,
                        device: torch.device) -> dict[int, torch.Tensor]:
        """The vision tower's output for this prompt's images and videos, by placeholder token id."""
        return {token: visual(patches.pixel_values.to(device), patches.grid_thw)
                for token, patches in ((image_token_id, self.images), (video_token_id, self.videos))
                if patches is not None}

    def __post_init__(self) -> None:
        videos = 0 if self.videos is None else self.videos.grid_thw.shape[0]
        if len(self.video_seconds_per_grid) != videos:
            raise ValueError(f"{videos} videos but {len(self.video_seconds_per_grid)} video_seconds_per_grid")
        if (self.audio_mel is None) != (self.audio_frames is None):
            raise ValueError("audio_mel and audio_frames go together")


@dataclass(frozen=True)
class DeepStackFeatures:
    """Qwen3-VL's DeepStack features of one prompt: rows [L, V, H] of its V image / video tokens
    at prompt `positions` [V] (ascending). The decoder adds them after its first L layers; every
    other position gets zeros, which `dense` spells out for any slice of the prompt."""

    positions: torch.Tensor
    rows: torch.Tensor

    @classmethod
    def gather(cls, input_ids: torch.Tensor, visual: dict[int, torch.Tensor | None],
               dtype: torch.dtype) -> DeepStackFeatures | None:
        """From the encoder outputs by placeholder id ([n, 1 + L, H]: the merger row, then the L
        DeepStack rows), each kind's rows following its placeholders in order; None without any."""
        present = [(token, rows) for token, rows in visual.items() if rows is not None]
        if not present:
            return None
        positions = torch.cat([(input_ids == token).nonzero().flatten() for token, _ in present])
        stacked = torch.cat([rows[:, 1:].to(dtype) for _, rows in present]).transpose(0, 1)  # [L, V, H]
        order = positions.argsort()
        return cls(positions[order], stacked[:, order])

    @property
    def layers(self) -> int:
        return self.rows.shape[0]

    def dense(self, start: int, end: int) -> torch.Tensor:
        """[L, end - start, H] for prompt positions start..end-1 (a prefill chunk's share)."""
        out = self.rows.new_zeros(self.rows.shape[0], end - start, self.rows.shape[-1])
        bounds = torch.tensor([start, end], device=self.positions.device)
        first, last = torch.searchsorted(self.positions, bounds).tolist()
        out[:, self.positions[first:last] - start] = self.rows[:, first:last]
        return out


@dataclass(frozen=True)
class ThinkerPrompt:
    """One prompt ready for prefill: token ids [T], embeddings [T, H], TMRoPE ids, and for
    Qwen3-VL its DeepStack features."""

    input_ids: torch.Tensor
    embeds: torch.Tensor
    rope: PromptPositions
    deepstack: DeepStackFeatures | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def rope_delta(self) -> int:
        return self.rope.delta

    def prefill_inputs(self, start: int = 0, end: int | None = None) -> dict[str, torch.Tensor]:
        """Keyword arguments of `OmniThinker.forward` (all but cache and slots) for tokens
        start..end-1 of the prompt as one row: input_ids, positions, inputs_embeds, rope_positions
        (and deepstack when the prompt has it)."""
        end = len(self) if end is None else end
        device = self.embeds.device
        inputs = {
            "input_ids": self.input_ids[None, start:end],
            "positions": torch.arange(start, end, device=device)[None],
            "inputs_embeds": self.embeds[None, start:end],
            "rope_positions": self.rope.positions[:, None, start:end].to(device),
        }
        if self.deepstack is not None:
            inputs["deepstack"] = self.deepstack.dense(start, end)[:, None]
        return inputs


class OmniThinker(Qwen2ForCausalLM):
    """The Qwen2 decoder (`model.`, `lm_head.`) plus the media encoders.

    `config` stays the text model's Qwen2Config (what the engine's cache sizing reads);
    the whole thinker's config is `thinker_config`.
    """

    def __init__(self, config: ThinkerConfig):
        super().__init__(config.text_config)
        self.thinker_config = config
        self.audio_tower = AudioEncoder(config.audio_config)
        self.visual = VisionEncoder(config.vision_config)

    def encode_media(self, media: ThinkerMedia) -> dict[int, torch.Tensor]:
        """Encoder outputs by placeholder token id: [placeholders of that kind, H]."""
        c = self.thinker_config
        features = {}
        if media.images is not None:
            features[c.image_token_index] = self.visual(media.images.pixel_values.to(self.device),
                                                        media.images.grid_thw)
        if media.videos is not None:
            features[c.video_token_index] = self.visual(media.videos.pixel_values.to(self.device),
                                                        media.videos.grid_thw)
        if media.audio_mel is not None:
            features[c.audio_token_index] = self.audio_tower(media.audio_mel.to(self.device), media.audio_frames)
        return features

    def embed(self, input_ids: torch.Tensor, media: ThinkerMedia | None = None,
              features: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """input_ids [T] → [T, H]: token embeddings with each placeholder run replaced by its
        encoder rows, in order. The count of placeholders of each kind must equal the rows.
        features: the media's encoder outputs if already known (`encode_media`'s result)."""
        input_ids = input_ids.to(self.device)
        if features is None:
            features = self.encode_media(media or ThinkerMedia())
        c = self.thinker_config
        tokens = (c.image_token_index, c.video_token_index, c.audio_token_index)
        return merge_placeholders(input_ids, self.model.embed_tokens(input_ids), {t: features.get(t) for t in tokens})

    @torch.no_grad()
    def prepare_prompt(self, input_ids: torch.Tensor | list[int], media: ThinkerMedia | None = None,
                       features: dict[int, torch.Tensor] | None = None) -> ThinkerPrompt:
        """Encode the media (unless `features` has their encoder outputs), merge them into the
        prompt's embeddings and compute its TMRoPE ids."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
        media = media or ThinkerMedia()
        rope = mrope_positions(
            input_ids,
            self.thinker_config.mrope_layout,
            image_grid_thw=media.images.grid_thw if media.images is not None else None,
            video_grid_thw=media.videos.grid_thw if media.videos is not None else None,
            video_seconds_per_grid=media.video_seconds_per_grid,
        )
        return ThinkerPrompt(input_ids.to(self.device), self.embed(input_ids, media, features), rope)


def merge_placeholders(
    input_ids: torch.Tensor, embeds: torch.Tensor, rows_by_token: dict[int, torch.Tensor | None]
) -> torch.Tensor:
    """embeds [T, H] with each placeholder token's positions replaced, in order, by that
    token's encoder rows [n, H]. The count of placeholders of each kind must equal the rows."""
    for token, rows in rows_by_token.items():
        placeholders = input_ids == token
        wanted, given = int(placeholders.sum()), 0 if rows is None else rows.shape[0]
        if wanted != given:
            raise ValueError(f"the prompt has {wanted} placeholder tokens {token} but the media give {given} rows")
        if rows is not None:
            embeds[placeholders] = rows.to(embeds.dtype)
    return embeds


def audio_placeholder_count(mel_frames: int) -> int:
    """<|AUDIO|> tokens a prompt needs for an audio of this many mel frames (10 ms each)."""
    return int(audio_output_tokens(torch.tensor(mel_frames)))
