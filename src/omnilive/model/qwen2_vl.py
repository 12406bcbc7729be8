"""Qwen2-VL (and QVQ, a Qwen2-VL checkpoint): Qwen2.5-VL's decoder and prompts with the older ViT.

What differs from Qwen2.5-VL (model/qwen2_5_vl.py, whose decoder, prompt preparation and
loading this reuses):
- the vision tower: LayerNorm instead of RMSNorm, a two-layer MLP (`fc1`, `fc2`, QuickGELU)
  instead of SwiGLU, one fused `attn.qkv` kept as the checkpoint has it, and every block
  attends over a whole frame (no windows); its config says `embed_dim` for its width and
  `hidden_size` for the LM's (what the merger outputs);
- video time: a temporal patch advances the temporal M-RoPE id by exactly 1 (no seconds).

Module names follow the checkpoint (`visual.*`, `model.*`, `lm_head.*`, or transformers 5's
`model.visual.*` / `model.language_model.*`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.omni_config import PatchGeometry, vision_config_values
from omnilive.model.packed import pack_decoder
from omnilive.model.qwen2 import Qwen2ForCausalLM
from omnilive.model.qwen2_5_vl import VLConfig, Qwen2_5_VL, renamed, vl_text_config
from omnilive.model.vision import (
    NORM_EPS,
    FusedQkvAttention,
    PatchEmbed,
    PatchMerger,
    VisionBlock,
    VisionRotary,
    check_patches,
    frame_attention_inputs,
    rebuild_rotary,
)
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "silu": F.silu,
}


@dataclass(frozen=True)
class Qwen2VLVisionConfig(PatchGeometry):
    """`vision_config` of a Qwen2-VL config.json, under its own key names."""

    depth: int = 32
    embed_dim: int = 1280
    hidden_size: int = 3584  # the LM's hidden size: what the merger outputs
    hidden_act: str = "quick_gelu"
    mlp_ratio: float = 4.0
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    rope_theta: float = 10000.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        raw = dict(raw)
        if "in_chans" in raw and "in_channels" not in raw:  # the released checkpoints' spelling
            raw["in_channels"] = raw["in_chans"]
        if raw.get("hidden_act", cls.hidden_act) not in ACTIVATIONS:
            raise NotImplementedError(f"vision activation {raw['hidden_act']!r} is not supported")
        return cls(**vision_config_values(cls, raw))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class Qwen2VLConfig(VLConfig):
    """A Qwen2-VL config.json: VLConfig's fields with Qwen2-VL's vision config."""

    vision_config: Qwen2VLVisionConfig = Qwen2VLVisionConfig()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        text_config, tie = vl_text_config(raw, "Qwen2-VL")
        scalar_names = {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"}
        return cls(text_config=text_config, vision_config=Qwen2VLVisionConfig.from_dict(raw.get("vision_config", {})),
                   tie_word_embeddings=tie, **{key: value for key, value in raw.items() if key in scalar_names})

    def video_id_steps(self, seconds_per_grid: tuple[float, ...]) -> torch.Tensor:
        """One temporal id per temporal patch, whatever its seconds."""
        return torch.ones(len(seconds_per_grid), dtype=torch.float32)


class VisionMlp(nn.Module):
    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, config.embed_dim)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Qwen2VLVision(nn.Module):
    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.config = config
        width = config.embed_dim
        self.patch_embed = PatchEmbed(config, width)
        self.rotary = VisionRotary(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(
            VisionBlock(nn.LayerNorm(width, eps=NORM_EPS), nn.LayerNorm(width, eps=NORM_EPS),
                        FusedQkvAttention(width, config.num_heads), VisionMlp(config))
            for _ in range(config.depth))
        self.merger = PatchMerger(width, config.spatial_merge_size, config.hidden_size, nn.LayerNorm)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*T*P*P] in preprocessing order, grid_thw [items, 3]
        → [N / merge^2, hidden_size], one row per LM placeholder token, items in order."""
        c = self.config
        check_patches(pixel_values, grid_thw, c.patch_dim)
        # every block attends over a whole frame
        bounds, cos, sin = frame_attention_inputs(grid_thw.cpu().tolist(), c.spatial_merge_size, self.rotary,
                                                  pixel_values.device)
        x = self.patch_embed(pixel_values)
        for block in self.blocks:
            x = block(x, cos, sin, bounds)
        return self.merger(x)


class Qwen2VL(Qwen2_5_VL):
    """Qwen2.5-VL's decoder and prompt preparation (`vl_config` is a Qwen2VLConfig) with Qwen2-VL's ViT."""

    def __init__(self, config: Qwen2VLConfig):
        Qwen2ForCausalLM.__init__(self, config.text_config)
        self.vl_config = config
        self.visual = Qwen2VLVision(config.vision_config)


def load_qwen2_vl(directory: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu") -> Qwen2VL:
    """A Qwen2-VL checkpoint directory (config.json + safetensors), in eval mode; every key
    consumed (WeightsMismatchError names the rest)."""
    directory = Path(directory)
    config = Qwen2VLConfig.from_dict(read_config(directory))
    model = empty_model(Qwen2VL, config, resolve_dtype(dtype), device)
    rebuild_rotary(model.visual)
    tensors = load_prefixed_tensors(directory, "")
    ours = {renamed(key): tensor for key, tensor in tensors.items()}
    load_state_dict_strict(model, ours, assign=True)
    model = model.to(device)
    pack_decoder(model)
    return model
