"""Qwen2.5-VL: the Qwen2.5-Omni thinker's vision encoder and M-RoPE Qwen2 decoder, without audio.

The parts are the ones the Omni thinker uses (`VisionEncoder`, `Qwen2ForCausalLM` with an
`mrope_section`, `mrope_positions`); what differs is the checkpoint:

- config.json: `text_config` (or, in older checkpoints, the text keys at the top level with
  `rope_scaling: {"type": "mrope", ...}`), `vision_config` with `tokens_per_second`, and
  `image_token_id` / `video_token_id` / `vision_start_token_id` at the top level;
- tensors: `visual.*`, `model.*`, `lm_head.*` (transformers 5 in memory spells them
  `model.visual.*` / `model.language_model.*`; both are accepted), and each vision block's
  attention has one fused `attn.qkv` projection, split into our q / k / v at load.

Video time: a temporal patch advances the temporal M-RoPE id by tokens_per_second x its
seconds (`second_per_grid_ts`), truncated. Text after an image or video starts one past the
largest id of that item, as the original Qwen2.5-VL code and vLLM do (transformers 5.23
instead restarts at the largest spatial id + 1, which differs only for videos whose temporal
ids outrun their height and width).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch

from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.omni_config import VisionEncoderConfig
from omnilive.model.packed import pack_decoder
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.rope_index import MRopeLayout, mrope_positions
from omnilive.model.thinker import ThinkerMedia, ThinkerPrompt, merge_placeholders
from omnilive.model.vision import VisionEncoder, rebuild_rotary
from omnilive.model.weights import (
    WeightsMismatchError,
    empty_model,
    load_state_dict_strict,
    resolve_dtype,
)

# no Qwen2-VL, Qwen2.5-VL or Qwen3-VL token has a negative id: disables rope_index's audio handling
_NO_TOKEN = -1
# a checkpoint key prefix → ours; the first that matches wins (transformers 5's nested names first)
_KEY_PREFIXES = (
    ("model.visual.", "visual."),
    ("model.language_model.", "model."),
    ("visual.", "visual."),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
)


def renamed(key: str) -> str:
    """A checkpoint key under our module names (the first matching prefix wins)."""
    return next((new + key[len(old):] for old, new in _KEY_PREFIXES if key.startswith(old)), key)


def vl_text_config(raw: dict[str, Any], family: str) -> tuple[Qwen2Config, bool]:
    """The M-RoPE Qwen2 text config of a Qwen2-VL / Qwen2.5-VL config.json (older checkpoints
    keep its keys at the top level), and whether the output head is tied."""
    text = _normalised_rope(raw.get("text_config") or raw)
    tie = bool(raw.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False))
    text_config = Qwen2Config.from_dict({**text, "model_type": "qwen2", "attention_bias": True,
                                         "tie_word_embeddings": tie})
    if text_config.mrope_section is None:
        raise ValueError(f"the {family} text config has no mrope_section")
    return text_config, tie


def _normalised_rope(text: dict[str, Any]) -> dict[str, Any]:
    """Old configs mark M-RoPE as rope type "mrope"; for us it is the default rotary plus sections."""
    text = dict(text)
    for key in ("rope_parameters", "rope_scaling"):
        rope = text.get(key)
        if isinstance(rope, dict) and "mrope" in (rope.get("rope_type"), rope.get("type")):
            text[key] = {**{k: v for k, v in rope.items() if k != "type"}, "rope_type": "default"}
    return text


@dataclass(frozen=True)
class VLConfig:
    """A Qwen2.5-VL config.json, under its own key names."""

    text_config: Qwen2Config
    vision_config: VisionEncoderConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tokens_per_second: int | float = 4  # transformers' default; released checkpoints say 2
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        text_config, tie = vl_text_config(raw, "Qwen2.5-VL")
        vision = raw.get("vision_config", {})
        scalar_names = {f.name for f in dataclasses.fields(cls)} - {"text_config", "vision_config", "tie_word_embeddings"}
        return cls(
            text_config=text_config,
            vision_config=VisionEncoderConfig.from_dict(vision),
            tokens_per_second=vision.get("tokens_per_second", cls.tokens_per_second),
            tie_word_embeddings=tie,
            **{key: value for key, value in raw.items() if key in scalar_names and key != "tokens_per_second"},
        )

    @property
    def mrope_layout(self) -> MRopeLayout:
        # video seconds are turned into id steps before rope_index sees them, so one id per "second"
        return vision_mrope_layout(self)

    def video_id_steps(self, seconds_per_grid: tuple[float, ...]) -> torch.Tensor:
        """Temporal id step of each video: tokens_per_second x seconds per temporal patch,
        in float32 and in this order, as transformers computes it (the ids are truncated)."""
        return self.tokens_per_second * torch.tensor(seconds_per_grid, dtype=torch.float32)


def vision_mrope_layout(config) -> MRopeLayout:
    """The M-RoPE layout of a model that sees images and videos and hears nothing (a VL config
    with image / video / vision-start token ids and a vision config)."""
    return MRopeLayout(
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        audio_token_id=_NO_TOKEN,
        vision_start_token_id=config.vision_start_token_id,
        audio_start_token_id=_NO_TOKEN,
        spatial_merge_size=config.vision_config.spatial_merge_size,
        position_id_per_seconds=1,
    )


class VisionLanguageMedia:
    """The media side of a model (`vl_config`, `visual`) that sees images and videos and hears
    nothing; `family` names it in errors."""

    family = "Qwen2.5-VL"

    def encode_media(self, media: ThinkerMedia) -> dict[int, torch.Tensor]:
        """Encoder outputs by placeholder token id: [placeholders of that kind, ...]."""
        if media.audio_mel is not None:
            raise ValueError(f"{self.family} takes no audio")
        c = self.vl_config
        return media.visual_features(self.visual, c.image_token_id, c.video_token_id, self.device)

    def placeholder_rows(self, input_ids: torch.Tensor, media: ThinkerMedia | None,
                         features: dict[int, torch.Tensor] | None) -> tuple[torch.Tensor, dict]:
        """input_ids on the model's device and the encoder outputs by image / video placeholder id
        (None for a kind the prompt has none of). features: the media's encoder outputs if
        already known (`encode_media`'s result)."""
        media = media or ThinkerMedia()
        if media.audio_mel is not None:
            raise ValueError(f"{self.family} takes no audio")
        input_ids = input_ids.to(self.device)
        if features is None:
            features = self.encode_media(media)
        c = self.vl_config
        return input_ids, {token: features.get(token) for token in (c.image_token_id, c.video_token_id)}


class Qwen2_5_VL(VisionLanguageMedia, Qwen2ForCausalLM):
    """The Qwen2 decoder (`model.`, `lm_head.`) plus the vision encoder (`visual.`).

    `config` is the text model's Qwen2Config (what cache sizing reads); the whole model's
    config is `vl_config`. Prompts come out as the Omni thinker's `ThinkerPrompt`, so the
    engine runs both the same way.
    """

    def __init__(self, config: VLConfig):
        super().__init__(config.text_config)
        self.vl_config = config
        self.visual = VisionEncoder(config.vision_config)

    def embed(self, input_ids: torch.Tensor, media: ThinkerMedia | None = None,
              features: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """input_ids [T] → [T, H]: token embeddings with every image / video placeholder replaced
        by the encoder's rows, in order. Placeholder counts must equal the rows."""
        input_ids, rows = self.placeholder_rows(input_ids, media, features)
        return merge_placeholders(input_ids, self.model.embed_tokens(input_ids), rows)

    @torch.no_grad()
    def prepare_prompt(self, input_ids: torch.Tensor | list[int], media: ThinkerMedia | None = None,
                       features: dict[int, torch.Tensor] | None = None) -> ThinkerPrompt:
        """Encode the images / videos (unless `features` has their encoder outputs), merge them
        into the prompt's embeddings and compute its M-RoPE ids. media.video_seconds_per_grid:
        seconds per temporal patch of each video."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
        media = media or ThinkerMedia()
        rope = mrope_positions(
            input_ids,
            self.vl_config.mrope_layout,
            image_grid_thw=media.images.grid_thw if media.images is not None else None,
            video_grid_thw=media.videos.grid_thw if media.videos is not None else None,
            video_seconds_per_grid=self.vl_config.video_id_steps(media.video_seconds_per_grid),
        )
        return ThinkerPrompt(input_ids.to(self.device), self.embed(input_ids, media, features), rope)


def checkpoint_to_ours(tensors: dict[str, torch.Tensor], vision: VisionEncoderConfig) -> dict[str, torch.Tensor]:
    """Checkpoint tensors → our names: prefixes mapped, each fused vision `attn.qkv` split
    into `attn.q` / `attn.k` / `attn.v`. Unknown keys pass through (the strict load names them)."""
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = renamed(key)
        stem, _, kind = name.rpartition(".")
        if name.startswith("visual.") and stem.endswith(".attn.qkv"):
            ours.update(_split_qkv(key, tensor, stem[: -len("qkv")], kind, vision.hidden_size))
        else:
            ours[name] = tensor
    return ours


def _split_qkv(key: str, tensor: torch.Tensor, attn: str, kind: str, dim: int) -> dict[str, torch.Tensor]:
    expected = (3 * dim, dim) if kind == "weight" else (3 * dim,)
    if tuple(tensor.shape) != expected:
        raise WeightsMismatchError(f"shape mismatch: {key}: checkpoint {tuple(tensor.shape)} vs model {expected}")
    q, k, v = tensor.chunk(3, dim=0)  # rows are [q; k; v], each head-major
    return {f"{attn}q.{kind}": q, f"{attn}k.{kind}": k, f"{attn}v.{kind}": v}


def load_qwen2_5_vl(directory: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu") -> Qwen2_5_VL:
    """A Qwen2.5-VL checkpoint directory (config.json + safetensors), in eval mode.

    dtype None / "auto" picks bf16 where the CPU computes it natively, else float32.
    Raises WeightsMismatchError naming every missing, unexpected or misshaped key.
    """
    directory = Path(directory)
    config = VLConfig.from_dict(read_config(directory))
    model = empty_model(Qwen2_5_VL, config, resolve_dtype(dtype), device)
    rebuild_rotary(model.visual)
    tensors = checkpoint_to_ours(load_prefixed_tensors(directory, ""), config.vision_config)
    load_state_dict_strict(model, tensors, assign=True)
    model = model.to(device)
    pack_decoder(model)  # bf16 on a CPU that runs it natively: faster decode, same numbers
    return model
