"""Qwen3-VL (dense `qwen3_vl` and `qwen3_vl_moe`): a Qwen3 decoder with interleaved M-RoPE and
DeepStack, and its own ViT (model/qwen3_vl_vision.py).

What differs from Qwen2.5-VL (model/qwen2_5_vl.py, whose prompt preparation this follows):
- the decoder is Qwen3's (an RMSNorm on every query and key head, no q/k/v bias); its M-RoPE
  interleaves the three axes frequency by frequency (`mrope_section` counts each axis' share);
  the MoE variant keeps each layer's experts fused (`mlp.experts.gate_up_proj`,
  `mlp.experts.down_proj`, router `mlp.gate`; model/moe.py FusedSparseMoE, which also takes
  the released checkpoints' transposed layout);
- DeepStack: the ViT also merges the output of a few of its blocks into LM-sized rows; the
  decoder adds them to the hidden states of the image / video tokens after its first layers
  (`ThinkerPrompt.deepstack`: the rows and their positions; the decoder's `deepstack`
  argument: their dense [L, B, T, H] form for one step);
- video time is text: the processor writes "<t seconds>" before each temporal patch's frame
  group (`<|vision_start|>` + placeholders + `<|vision_end|>`), so a video is laid out as that
  many one-frame images; every group's temporal id is its start id, like an image's.

Encoder rows come out as [placeholders, 1 + L, H] (merger row, then the L DeepStack rows), so
the backend's encoder cache keeps them as one tensor per media item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch

from omnilive.model.moe import fused_experts_as_ours
from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.packed import pack_decoder
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.qwen2_5_vl import VisionLanguageMedia, renamed, vision_mrope_layout
from omnilive.model.qwen3_vl_vision import Qwen3VLVision, Qwen3VLVisionConfig
from omnilive.model.rope_index import MRopeLayout, mrope_positions
from omnilive.model.thinker import DeepStackFeatures, ThinkerMedia, ThinkerPrompt, merge_placeholders
from omnilive.model.vision import rebuild_rotary
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

TEXT_MODEL_TYPES = {"qwen3_vl": "qwen3_vl_text", "qwen3_vl_moe": "qwen3_vl_moe_text"}
DEFAULT_MROPE_SECTION = (24, 20, 20)  # transformers' default when a config names none


def qwen3_rope_parameters(text: dict[str, Any]) -> dict[str, Any]:
    """A Qwen3 text config's rope_parameters (older files: rope_scaling) as Qwen2Config reads
    them: transformers' mrope_section where it names none, the rope type under `rope_type`."""
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope.setdefault("mrope_section", list(DEFAULT_MROPE_SECTION))
    rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
    rope.pop("type", None)
    return rope


@dataclass(frozen=True)
class Qwen3VLConfig:
    """A Qwen3-VL (or Qwen3-VL-MoE) config.json, under its own key names."""

    text_config: Qwen2Config
    vision_config: Qwen3VLVisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    model_type: str = "qwen3_vl"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        model_type = raw.get("model_type", "qwen3_vl")
        if model_type not in TEXT_MODEL_TYPES:
            raise ValueError(f"not a Qwen3-VL config: model_type {model_type!r}")
        text = dict(raw.get("text_config") or {})
        rope = qwen3_rope_parameters(text)
        # the top-level flag decides (transformers ties by it); older files may only have the text one
        tie = bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
        text_config = Qwen2Config.from_dict({**text, "rope_parameters": rope, "model_type": TEXT_MODEL_TYPES[model_type],
                                             "tie_word_embeddings": tie})
        scalar_names = {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"}
        return cls(text_config=text_config, vision_config=Qwen3VLVisionConfig.from_dict(raw.get("vision_config", {})),
                   tie_word_embeddings=tie, model_type=model_type,
                   **{key: value for key, value in raw.items() if key in scalar_names})

    @property
    def deepstack_layers(self) -> int:
        return len(self.vision_config.deepstack_visual_indexes)

    @property
    def mrope_layout(self) -> MRopeLayout:
        return vision_mrope_layout(self)


def frame_grids(video_grid_thw: torch.Tensor) -> torch.Tensor:
    """[videos, 3] → [temporal patches, 3]: each temporal patch its own (1, h, w) item, as the
    prompt lays it out between timestamps."""
    frames = video_grid_thw.repeat_interleave(video_grid_thw[:, 0], dim=0)
    frames[:, 0] = 1
    return frames


class Qwen3VL(VisionLanguageMedia, Qwen2ForCausalLM):
    """The Qwen3 decoder (`model.`, `lm_head.`) plus the vision tower (`visual.`); `config` is
    the text model's Qwen2Config, the whole model's `vl_config`. Prompts come out as a
    `ThinkerPrompt` with its DeepStack features, which the engine feeds like any other."""

    family = "Qwen3-VL"

    def __init__(self, config: Qwen3VLConfig):
        super().__init__(config.text_config)
        self.vl_config = config
        self.visual = Qwen3VLVision(config.vision_config)

    def embed(self, input_ids: torch.Tensor, media: ThinkerMedia | None = None,
              features: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, DeepStackFeatures | None]:
        """input_ids [T] → embeddings [T, H] with every image / video placeholder replaced by
        its merger row (encoder outputs [n, 1 + L, H]), and the placeholders' DeepStack rows
        (None without media)."""
        input_ids, rows = self.placeholder_rows(input_ids, media, features)
        embeds = merge_placeholders(input_ids, self.model.embed_tokens(input_ids),
                                    {token: None if r is None else r[:, 0] for token, r in rows.items()})
        return embeds, DeepStackFeatures.gather(input_ids, rows, embeds.dtype)

    @torch.no_grad()
    def prepare_prompt(self, input_ids: torch.Tensor | list[int], media: ThinkerMedia | None = None,
                       features: dict[int, torch.Tensor] | None = None) -> ThinkerPrompt:
        """Encode the images / videos (unless `features` has their encoder outputs), merge them
        into the prompt's embeddings, gather the DeepStack features and compute the M-RoPE ids."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
        media = media or ThinkerMedia()
        frames = frame_grids(media.videos.grid_thw) if media.videos is not None else None
        rope = mrope_positions(
            input_ids,
            self.vl_config.mrope_layout,
            image_grid_thw=media.images.grid_thw if media.images is not None else None,
            video_grid_thw=frames,
            video_seconds_per_grid=torch.zeros(0 if frames is None else len(frames)),  # one frame each: no time
        )
        embeds, deepstack = self.embed(input_ids, media, features)
        return ThinkerPrompt(input_ids.to(self.device), embeds, rope, deepstack)


def load_qwen3_vl(directory: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu") -> Qwen3VL:
    """A Qwen3-VL or Qwen3-VL-MoE checkpoint directory (config.json + safetensors), in eval
    mode; every key consumed (WeightsMismatchError names the rest)."""
    directory = Path(directory)
    config = Qwen3VLConfig.from_dict(read_config(directory))
    model = empty_model(Qwen3VL, config, resolve_dtype(dtype), device)
    rebuild_rotary(model.visual)
    tensors = load_prefixed_tensors(directory, "")
    hidden = config.text_config.hidden_size
    ours = {renamed(key): fused_experts_as_ours(key, tensor, hidden) for key, tensor in tensors.items()}
    load_state_dict_strict(model, ours, assign=True)
    model = model.to(device)
    pack_decoder(model)  # bf16 on a CPU that runs it natively: faster decode, same numbers
    return model
