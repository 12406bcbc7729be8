"""The Qwen3-Omni thinker (`model_type: qwen3_omni_moe`, Qwen3-Omni-30B-A3B Instruct / Thinking /
Captioner): the AuT audio encoder (model/qwen3_omni_audio.py), Qwen3-VL's vision tower with
DeepStack (model/qwen3_vl_vision.py, under Qwen3-Omni's merger names) and a Qwen3-MoE decoder
(q/k norm, interleaved M-RoPE, DeepStack; model/qwen2.py with `qwen3_omni_moe_text`), with
TM-RoPE positions for text, images, audio, video and video with its audio
(model/qwen3_omni_rope.py).

A prompt is token ids with placeholder runs (<|image_pad|>, <|video_pad|>, <|audio_pad|>), one per
encoder row. `prepare_prompt` encodes the media, writes their rows over the placeholders, gathers
the image / video DeepStack rows and computes the positions; the engine then runs it like any
Qwen3-VL prompt (`ThinkerPrompt`). Generated tokens are text: rotary position = cache position +
the prompt's delta.

Checkpoint: the thinker's keys are `thinker.*` (`audio_tower.`, `visual.`, `model.`, `lm_head.`),
the experts one module each (`mlp.experts.N.{gate,up,down}_proj`, the released layout).
`load_qwen3_omni_thinker` reads only `thinker.` keys: `talker.*` and `code2wav.*` (speech out)
have their own loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.moe_int8 import quantize_experts_int8
from omnilive.model.omni_checkpoint import THINKER_PREFIX, load_prefixed_tensors, read_config
from omnilive.model.packed import pack_decoder
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.qwen3_omni_audio import Qwen3OmniAudioConfig, Qwen3OmniAudioEncoder, aut_output_tokens
from omnilive.model.qwen3_omni_rope import qwen3_omni_positions
from omnilive.model.qwen3_vl import qwen3_rope_parameters
from omnilive.model.qwen3_vl_vision import Qwen3VLVision, Qwen3VLVisionConfig
from omnilive.model.rope_index import MRopeLayout
from omnilive.model.thinker import DeepStackFeatures, ThinkerMedia, ThinkerPrompt, merge_placeholders
from omnilive.model.vision import NORM_EPS, VisionRotary
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

TEXT_MODEL_TYPE = "qwen3_omni_moe_text"


@dataclass(frozen=True)
class Qwen3OmniThinkerConfig:
    """`thinker_config` of a Qwen3-Omni config.json, under its own key names."""

    text_config: Qwen2Config
    vision_config: Qwen3VLVisionConfig
    audio_config: Qwen3OmniAudioConfig
    audio_token_id: int = 151646
    image_token_id: int = 151655
    video_token_id: int = 151656
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    position_id_per_seconds: int | float = 25
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """From a whole Qwen3-Omni config.json dict or its `thinker_config`."""
        if raw.get("model_type", "qwen3_omni_moe") not in ("qwen3_omni_moe", "qwen3_omni_moe_thinker"):
            raise ValueError(f"not a Qwen3-Omni config: model_type {raw.get('model_type')!r}")
        thinker = dict(raw.get("thinker_config", raw))
        text = dict(thinker.get("text_config") or {})
        rope = qwen3_rope_parameters(text)
        tie = bool(thinker.get("tie_word_embeddings", False))
        text_config = Qwen2Config.from_dict({**text, "rope_parameters": rope, "model_type": TEXT_MODEL_TYPE,
                                             "tie_word_embeddings": tie})
        scalar_names = {f.name for f in fields(cls)} - {"text_config", "vision_config", "audio_config"}
        return cls(text_config=text_config,
                   vision_config=Qwen3VLVisionConfig.from_dict(thinker.get("vision_config") or {}),
                   audio_config=Qwen3OmniAudioConfig.from_dict(thinker.get("audio_config") or {}),
                   **{key: value for key, value in thinker.items() if key in scalar_names})

    @property
    def deepstack_layers(self) -> int:
        return len(self.vision_config.deepstack_visual_indexes)

    @property
    def mrope_layout(self) -> MRopeLayout:
        return MRopeLayout(
            image_token_id=self.image_token_id, video_token_id=self.video_token_id,
            audio_token_id=self.audio_token_id, vision_start_token_id=self.vision_start_token_id,
            audio_start_token_id=self.audio_start_token_id, spatial_merge_size=self.vision_config.spatial_merge_size,
            position_id_per_seconds=self.position_id_per_seconds,
        )

    def audio_tokens(self, mel_frames: int) -> int:
        """<|audio_pad|> placeholders of an audio of this many mel frames."""
        return int(aut_output_tokens(mel_frames, self.audio_config.n_window))


class OmniPatchMerger(nn.Module):
    """Qwen3-VL's PatchMerger under Qwen3-Omni's names (`ln_q`, `mlp.0`, `mlp.2`)."""

    def __init__(self, config: Qwen3VLVisionConfig, unit_norm: bool = False):
        super().__init__()
        self.unit_dim = config.hidden_size * config.spatial_merge_size**2
        self.unit_norm = unit_norm
        self.ln_q = nn.LayerNorm(self.unit_dim if unit_norm else config.hidden_size, eps=NORM_EPS)
        self.mlp = nn.ModuleList([nn.Linear(self.unit_dim, self.unit_dim), nn.GELU(),
                                  nn.Linear(self.unit_dim, config.out_hidden_size)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = self.ln_q(x.view(-1, self.unit_dim)) if self.unit_norm else self.ln_q(x).view(-1, self.unit_dim)
        return self.mlp[2](F.gelu(self.mlp[0](units)))


class Qwen3OmniVision(Qwen3VLVision):
    """Qwen3-VL's vision tower; its mergers are `merger` and `merger_list` (DeepStack)."""

    def __init__(self, config: Qwen3VLVisionConfig):
        super().__init__(config)
        del self.deepstack_merger_list
        self.merger = OmniPatchMerger(config)
        self.merger_list = nn.ModuleList(OmniPatchMerger(config, unit_norm=True)
                                         for _ in config.deepstack_visual_indexes)

    @property
    def deepstack_merger_list(self) -> nn.ModuleList:  # the name Qwen3VLVision.forward reads
        return self.merger_list


class Qwen3OmniThinker(Qwen2ForCausalLM):
    """The MoE decoder (`model.`, `lm_head.`) plus `audio_tower.` and `visual.`; `config` is the
    text model's Qwen2Config (what the engine sizes caches by), `thinker_config` the whole."""

    def __init__(self, config: Qwen3OmniThinkerConfig):
        super().__init__(config.text_config)
        self.thinker_config = config
        self.audio_tower = Qwen3OmniAudioEncoder(config.audio_config)
        self.visual = Qwen3OmniVision(config.vision_config)

    def audio_placeholder_count(self, mel_frames: int) -> int:
        """<|audio_pad|> placeholders of an audio of this many mel frames (the engine's media keys)."""
        return self.thinker_config.audio_tokens(mel_frames)

    def encode_media(self, media: ThinkerMedia) -> dict[int, torch.Tensor]:
        """Encoder outputs by placeholder id: images / videos [n, 1 + L, H] (merger row, then
        the L DeepStack rows), audio [n, H] (every audio of the prompt encoded together)."""
        c = self.thinker_config
        features = media.visual_features(self.visual, c.image_token_id, c.video_token_id, self.device)
        if media.audio_mel is not None:
            features[c.audio_token_id] = self.audio_tower(media.audio_mel.to(self.device), media.audio_frames)
        return features

    def embed(self, input_ids: torch.Tensor, media: ThinkerMedia | None = None,
              features: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, DeepStackFeatures | None]:
        """input_ids [T] → (embeddings [T, H] with every placeholder replaced by its encoder row,
        the image / video placeholders' DeepStack rows or None)."""
        input_ids = input_ids.to(self.device)
        if features is None:
            features = self.encode_media(media or ThinkerMedia())
        c = self.thinker_config
        visual = {token: features.get(token) for token in (c.image_token_id, c.video_token_id)}
        rows = {token: None if r is None else r[:, 0] for token, r in visual.items()}
        rows[c.audio_token_id] = features.get(c.audio_token_id)
        embeds = merge_placeholders(input_ids, self.model.embed_tokens(input_ids), rows)
        return embeds, DeepStackFeatures.gather(input_ids, visual, embeds.dtype)

    @torch.no_grad()
    def prepare_prompt(self, input_ids: torch.Tensor | list[int], media: ThinkerMedia | None = None,
                       features: dict[int, torch.Tensor] | None = None) -> ThinkerPrompt:
        """Encode the media (unless `features` holds their encoder outputs), merge them into the
        prompt's embeddings with their DeepStack rows, and compute the TM-RoPE ids."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
        media = media or ThinkerMedia()
        rope = qwen3_omni_positions(
            input_ids, self.thinker_config.mrope_layout,
            image_grid_thw=media.images.grid_thw if media.images is not None else None,
            video_grid_thw=media.videos.grid_thw if media.videos is not None else None,
            video_seconds_per_grid=media.video_seconds_per_grid,
        )
        embeds, deepstack = self.embed(input_ids, media, features)
        return ThinkerPrompt(input_ids.to(self.device), embeds, rope, deepstack)


def load_qwen3_omni_thinker(directory: str | Path, dtype: torch.dtype | str | None = None,
                            device: str = "cpu", int8_experts: bool = False) -> Qwen3OmniThinker:
    """The thinker of a Qwen3-Omni checkpoint directory, in eval mode; every `thinker.` key
    consumed (WeightsMismatchError names the rest). The `talker.` / `code2wav.` keys are not
    read (model/qwen3_omni_talker.py, model/qwen3_omni_code2wav.py). int8_experts: the MoE
    experts held as int8 (model/moe_int8.py), quantised on the CPU before the model moves to
    `device`, which never holds their float weights."""
    directory = Path(directory)
    config = Qwen3OmniThinkerConfig.from_dict(read_config(directory))
    # built on the CPU: the checkpoint's tensors replace these (assign) before the move to `device`
    model = empty_model(Qwen3OmniThinker, config, resolve_dtype(dtype), "cpu")
    vision = config.vision_config
    with torch.device("cpu"):  # tables that are no checkpoint tensor: built on meta, rebuilt
        model.visual.rotary = VisionRotary(vision.head_dim, vision.rope_theta)
    model.audio_tower.reset_positions()
    load_state_dict_strict(model, load_prefixed_tensors(directory, THINKER_PREFIX), assign=True)
    if int8_experts:
        quantize_experts_int8(model.model.layers)
    model = model.to(device)
    pack_decoder(model)  # bf16 on a CPU that runs it natively: faster decode, same numbers
    return model
