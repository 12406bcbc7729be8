"""Qwen3-VL's vision tower: a ViT with learned position embeddings and DeepStack outputs.

pixel_values rows are patches of C x T x P x P pixels (P = 16) in `media.qwen_preprocess`
order (each 2x2 merge unit contiguous). The tower

1. embeds each patch (a Conv3d with bias whose kernel is its stride: one matrix multiply) and
   adds a learned position embedding: the square table of `num_position_embeddings` entries
   resampled bilinearly (corners aligned) to the image's patch grid;
2. runs the blocks (LayerNorm, fused `attn.qkv`, 2D rotary, tanh-GELU MLP), each attending over
   one frame;
3. merges each 2x2 unit into one LM token (`merger`), and does the same with the output of
   each block in `deepstack_visual_indexes` (`deepstack_merger_list`, which normalise the
   merged unit instead of each patch): features the decoder adds to its first layers.

Module names follow the checkpoint (`visual.*` / transformers 5's `model.visual.*`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.omni_config import PatchGeometry, vision_config_values
from omnilive.model.vision import (
    NORM_EPS,
    FusedQkvAttention,
    PatchEmbed,
    VisionBlock,
    VisionRotary,
    check_patches,
    frame_attention_inputs,
    patch_positions,
)

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
}


@dataclass(frozen=True)
class Qwen3VLVisionConfig(PatchGeometry):
    """`vision_config` of a Qwen3-VL config.json, under its own key names."""

    depth: int = 27
    hidden_size: int = 1152
    hidden_act: str = "gelu_pytorch_tanh"
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    out_hidden_size: int = 3584  # the LM's hidden size: what the mergers output
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
    rope_theta: float = 10000.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        raw = dict(raw)
        raw["deepstack_visual_indexes"] = tuple(raw.get("deepstack_visual_indexes", cls.deepstack_visual_indexes))
        if raw.get("hidden_act", cls.hidden_act) not in ACTIVATIONS:
            raise NotImplementedError(f"vision activation {raw['hidden_act']!r} is not supported")
        return cls(**vision_config_values(cls, raw))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_side(self) -> int:
        """Side of the square position-embedding table."""
        return int(self.num_position_embeddings**0.5)


def interpolation_taps(index: torch.Tensor, size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps (corners aligned) of patch rows (or columns) `index` of a grid of `size`
    into a table axis of `side` entries: the two table indices [n, 2] and their weights."""
    source = index.float() * (side - 1) / max(size - 1, 1)
    low = source.floor()
    fraction = source - low
    taps = torch.stack([low, low + 1], dim=-1).long().clamp(max=side - 1)
    return taps, torch.stack([1 - fraction, fraction], dim=-1)


class VisionMlp(nn.Module):
    def __init__(self, config: Qwen3VLVisionConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.linear_fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class PatchMerger(nn.Module):
    """Each 2x2 merge unit (4 consecutive rows) → one LM token. `unit_norm`: LayerNorm over the
    merged unit (the DeepStack mergers) instead of over each patch (the main merger)."""

    def __init__(self, config: Qwen3VLVisionConfig, unit_norm: bool = False):
        super().__init__()
        self.unit_dim = config.hidden_size * config.spatial_merge_size**2
        self.unit_norm = unit_norm
        self.norm = nn.LayerNorm(self.unit_dim if unit_norm else config.hidden_size, eps=NORM_EPS)
        self.linear_fc1 = nn.Linear(self.unit_dim, self.unit_dim)
        self.linear_fc2 = nn.Linear(self.unit_dim, config.out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = self.norm(x.view(-1, self.unit_dim)) if self.unit_norm else self.norm(x).view(-1, self.unit_dim)
        return self.linear_fc2(F.gelu(self.linear_fc1(units)))


class Qwen3VLVision(nn.Module):
    def __init__(self, config: Qwen3VLVisionConfig):
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.patch_embed = PatchEmbed(config, width, bias=True)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, width)
        self.rotary = VisionRotary(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(
            VisionBlock(nn.LayerNorm(width, eps=NORM_EPS), nn.LayerNorm(width, eps=NORM_EPS),
                        FusedQkvAttention(width, config.num_heads), VisionMlp(config))
            for _ in range(config.depth))
        self.merger = PatchMerger(config)
        self.deepstack_merger_list = nn.ModuleList(
            PatchMerger(config, unit_norm=True) for _ in config.deepstack_visual_indexes)

    def position_embeddings(self, grids: list[list[int]]) -> torch.Tensor:
        """[N, E] float32: the learned table resampled to each item's patch grid, in patch order."""
        side, merge = self.config.grid_side, self.config.spatial_merge_size
        indices, weights = [], []
        for t, h, w in grids:
            rows, cols = patch_positions(1, h, w, merge).unbind(-1)
            row_taps, row_weights = interpolation_taps(rows, h, side)
            col_taps, col_weights = interpolation_taps(cols, w, side)
            # four taps per patch: (row tap, column tap) pairs, row-major
            index = (row_taps[:, :, None] * side + col_taps[:, None, :]).flatten(1)
            weight = (row_weights[:, :, None] * col_weights[:, None, :]).flatten(1)
            indices.append(index.repeat(t, 1))
            weights.append(weight.repeat(t, 1))
        table = self.pos_embed.weight
        index, weight = torch.cat(indices).to(table.device), torch.cat(weights).to(table.device)
        return (table[index] * weight[..., None]).sum(1)  # float32 weights, as the reference mixes them

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*T*P*P], grid_thw [items, 3] → [N / merge^2, 1 + L, out_hidden_size]:
        for each LM placeholder token (items in order) the merger's row, then the L DeepStack
        mergers' rows."""
        c = self.config
        check_patches(pixel_values, grid_thw, c.patch_dim)
        grids = grid_thw.cpu().tolist()
        # every block attends over a whole frame
        bounds, cos, sin = frame_attention_inputs(grids, c.spatial_merge_size, self.rotary, pixel_values.device)
        x = self.patch_embed(pixel_values)
        x = x + self.position_embeddings(grids).to(x.dtype)
        deepstack = []
        for index, block in enumerate(self.blocks):
            x = block(x, cos, sin, bounds)
            if index in c.deepstack_visual_indexes:
                deepstack.append(self.deepstack_merger_list[c.deepstack_visual_indexes.index(index)](x))
        return torch.stack([self.merger(x), *deepstack], dim=1)
