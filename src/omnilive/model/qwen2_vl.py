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

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.packed import pack_decoder
from omnilive.model.qwen2 import Qwen2ForCausalLM
from omnilive.model.qwen2_5_vl import VLConfig, Qwen2_5_VL, renamed, vl_text_config
from omnilive.model.vision import (
    NORM_EPS,
    VisionRotary,
    check_patches,
    patch_positions,
    rotate_heads,
    segment_attention,
)
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "silu": F.silu,
}


@dataclass(frozen=True)
class Qwen2VLVisionConfig:
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
        rope = raw.get("rope_parameters") or {}
        if "rope_theta" in rope:
            raw["rope_theta"] = rope["rope_theta"]
        if raw.get("hidden_act", cls.hidden_act) not in ACTIVATIONS:
            raise NotImplementedError(f"vision activation {raw['hidden_act']!r} is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in names})

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


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


class PatchEmbed(nn.Module):
    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel, stride=kernel, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, C*T*P*P] → [N, E]: a stride-equals-kernel conv over one patch is a matmul."""
        weight = self.proj.weight.flatten(1)
        return F.linear(pixel_values.to(weight.dtype), weight)


class VisionAttention(nn.Module):
    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # [N, nh, D] each
        q, k = rotate_heads(q, cos, sin), rotate_heads(k, cos, sin)
        out = segment_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), bounds)
        return self.proj(out.transpose(0, 1).reshape(n, -1))


class VisionMlp(nn.Module):
    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, config.embed_dim)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=NORM_EPS)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=NORM_EPS)
        self.attn = VisionAttention(config)
        self.mlp = VisionMlp(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, bounds)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Each 2x2 merge unit (4 consecutive rows) → one token of the LM's hidden size."""

    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.unit_dim = config.embed_dim * config.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(config.embed_dim, eps=NORM_EPS)
        self.mlp = nn.Sequential(  # keys mlp.0 / mlp.2 as in the checkpoint
            nn.Linear(self.unit_dim, self.unit_dim), nn.GELU(), nn.Linear(self.unit_dim, config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.unit_dim))


class Qwen2VLVision(nn.Module):
    def __init__(self, config: Qwen2VLVisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.rotary = VisionRotary(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*T*P*P] in preprocessing order, grid_thw [items, 3]
        → [N / merge^2, hidden_size], one row per LM placeholder token, items in order."""
        c = self.config
        check_patches(pixel_values, grid_thw, c.patch_dim)
        grids = grid_thw.cpu().tolist()
        positions = torch.cat([patch_positions(t, h, w, c.spatial_merge_size) for t, h, w in grids])
        frames = torch.tensor([h * w for t, h, w in grids for _ in range(t)])
        bounds = F.pad(frames.cumsum(0), (1, 0)).to(pixel_values.device)  # attention within each frame
        cos, sin = self.rotary(positions.to(pixel_values.device))
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
    vision = config.vision_config
    with torch.device("cpu"):  # the rotary frequencies are no checkpoint tensor: built on meta, rebuilt
        model.visual.rotary = VisionRotary(vision.head_dim, vision.rope_theta)
    tensors = load_prefixed_tensors(directory, "")
    ours = {renamed(key): tensor for key, tensor in tensors.items()}
    load_state_dict_strict(model, ours, assign=True)
    model = model.to(device)
    pack_decoder(model)
    return model
