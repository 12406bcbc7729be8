"""The Qwen2.5-Omni thinker's vision encoder (a Qwen2.5-VL style ViT).

pixel_values rows are flattened patches of C x T x P x P pixels (T = temporal_patch_size frames,
P = patch_size), laid out by `media.qwen_preprocess` so that every 2x2 group of neighbouring
patches (a "merge unit") is contiguous. The encoder

1. embeds each patch (a Conv3d whose kernel equals its stride, i.e. one matrix multiply),
2. reorders merge units window by window, so that every attention segment is contiguous,
3. runs the blocks: most attend within windows of `window_units` x `window_units` merge units,
   the blocks in `fullatt_block_indexes` attend over a whole frame,
4. merges each 2x2 unit into one LM token and undoes the window order.

Attention never crosses images or frames. Module names follow the checkpoint
(`thinker.visual.*` without the prefix), so loading is a plain key mapping.

The Qwen2-VL and Qwen3-VL towers (model/qwen2_vl.py, model/qwen3_vl_vision.py) are built from
the same parts: patch embedding, pre-norm blocks, fused-qkv attention and the merger.

Shapes: N = patches in the batch, E = hidden_size, nh = heads, D = head dim, U = N / 4 merge units.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.layers import RMSNorm, SwiGLU, rotate_half
from omnilive.model.omni_config import VisionEncoderConfig

# the reference's vision RMSNorms use eps 1e-6 regardless of config
NORM_EPS = 1e-6


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Attention within contiguous segments of a packed sequence.

    q, k, v [nh, N, D]; bounds [S + 1] cumulative segment ends starting at 0. Returns [nh, N, D].
    Segments of equal length run as one batched SDPA call, so a frame cut into hundreds of
    windows costs a handful of calls and no N x N mask.
    """
    starts, lengths = bounds[:-1], bounds[1:] - bounds[:-1]
    out = torch.empty_like(q)
    for length in lengths.unique().tolist():
        group_starts = starts[lengths == length]
        rows = group_starts[:, None] + torch.arange(length, device=q.device)  # [S_len, length]
        # [nh, S_len, length, D] → [S_len, nh, length, D]
        qs, ks, vs = (t[:, rows].transpose(0, 1) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(qs, ks, vs)
        out[:, rows] = attended.transpose(0, 1)
    return out


@dataclass(frozen=True)
class VisionLayout:
    """Where every patch goes, computed once per batch from grid_thw.

    unit_order [U]: merge units in window order (the encoder's working order);
    token_order [N]: the same order spelled out per patch.
    window_bounds / frame_bounds: cumulative token offsets of windows / whole frames,
    both in working order (windows never straddle frames, so frames stay contiguous).
    positions [N, 2]: (row, column) of each patch in its frame, in working order.
    """

    unit_order: torch.Tensor
    token_order: torch.Tensor
    window_bounds: torch.Tensor
    frame_bounds: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def build(cls, grid_thw: torch.Tensor, config: VisionEncoderConfig) -> VisionLayout:
        merge, win = config.spatial_merge_size, config.window_units
        unit_orders, window_lengths, frame_lengths, positions = [], [], [], []
        unit_offset = 0
        for t, h, w in grid_thw.tolist():
            units_h, units_w = h // merge, w // merge
            units = torch.arange(t * units_h * units_w).reshape(t, units_h, units_w)
            # pad each frame up to whole windows with -1, then read window by window
            pad_h, pad_w = -units_h % win, -units_w % win
            padded = F.pad(units, (0, pad_w, 0, pad_h), value=-1)
            windows_h, windows_w = padded.shape[1] // win, padded.shape[2] // win
            windows = padded.reshape(t, windows_h, win, windows_w, win).permute(0, 1, 3, 2, 4)
            windows = windows.reshape(t * windows_h * windows_w, win * win)
            valid = windows >= 0
            unit_orders.append(windows[valid] + unit_offset)
            window_lengths.append(valid.sum(1) * merge * merge)
            frame_lengths.append(torch.full((t,), h * w))
            positions.append(patch_positions(t, h, w, merge))
            unit_offset += t * units_h * units_w

        unit_order = torch.cat(unit_orders)
        token_order = _expand_units(unit_order, merge * merge)
        return cls(
            unit_order=unit_order,
            token_order=token_order,
            window_bounds=F.pad(torch.cat(window_lengths).cumsum(0), (1, 0)),
            frame_bounds=F.pad(torch.cat(frame_lengths).cumsum(0), (1, 0)),
            positions=torch.cat(positions)[token_order],
        )

    def to(self, device: torch.device) -> VisionLayout:
        return VisionLayout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def to_working_order(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] in preprocessing order → [N, ...] in window order."""
        return x[self.token_order]

    def units_to_input_order(self, merged: torch.Tensor) -> torch.Tensor:
        """[U, ...] in window order → [U, ...] in preprocessing order."""
        return merged[torch.argsort(self.unit_order)]


def check_patches(pixel_values: torch.Tensor, grid_thw: torch.Tensor, patch_dim: int) -> None:
    """ValueError unless pixel_values is [patches of grid_thw, patch_dim]."""
    expected = int(grid_thw.prod(-1).sum())
    if pixel_values.shape != (expected, patch_dim):
        raise ValueError(f"pixel_values {tuple(pixel_values.shape)} do not match grid_thw "
                         f"({expected} patches of {patch_dim})")


def patch_positions(t: int, h: int, w: int, merge: int) -> torch.Tensor:
    """[t*h*w, 2] (row, col) of each patch in preprocessing order: merge units row-major,
    the 2x2 patches of a unit contiguous, the same grid repeated for each frame."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    block = (h // merge, merge, w // merge, merge)
    rows = rows.reshape(block).transpose(1, 2).flatten()
    cols = cols.reshape(block).transpose(1, 2).flatten()
    return torch.stack([rows, cols], dim=-1).repeat(t, 1)


def _expand_units(unit_order: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Merge-unit order [U] → token order [U * unit_size]."""
    return (unit_order[:, None] * unit_size + torch.arange(unit_size)).flatten()


class VisionRotary(nn.Module):
    """2D rotary: the first half of each head's rotated pairs encode the patch row, the second
    half its column, with the same D/4 frequencies for both."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        spatial_dim = head_dim // 2
        exponents = torch.arange(0, spatial_dim, 2, dtype=torch.float) / spatial_dim
        # plain attribute: stays float32 under .to(bf16) and is not in the checkpoint
        self.inv_freq = 1.0 / (theta**exponents)  # [D/4]

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N, 2] → cos, sin [N, D] in float32."""
        inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[..., None] * inv_freq  # [N, 2, D/4]
        half = freqs.flatten(1)  # [N, D/2]: rows' angles, then columns'
        angles = torch.cat([half, half], dim=-1)
        return angles.cos(), angles.sin()


def rebuild_rotary(tower: nn.Module) -> None:
    """Real rotary frequencies for a tower built on the meta device: no checkpoint tensor holds them."""
    with torch.device("cpu"):
        tower.rotary = VisionRotary(tower.config.head_dim, tower.config.rope_theta)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor
    ) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (proj(x).view(n, self.num_heads, -1) for proj in (self.q, self.k, self.v))  # [N, nh, D]
        q, k = rotate_heads(q, cos, sin), rotate_heads(k, cos, sin)
        out = segment_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), bounds)
        return self.proj(out.transpose(0, 1).reshape(n, -1))


def rotate_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, nh, D]; cos/sin [N, D] float32. Rotation in float32, as the reference does."""
    x32 = x.float()
    cos, sin = cos[:, None], sin[:, None]
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class FusedQkvAttention(nn.Module):
    """VisionAttention with one fused `qkv` projection, kept as the Qwen2-VL / Qwen3-VL checkpoints have it."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # [N, nh, D] each
        q, k = rotate_heads(q, cos, sin), rotate_heads(k, cos, sin)
        out = segment_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), bounds)
        return self.proj(out.transpose(0, 1).reshape(n, -1))


class VisionBlock(nn.Module):
    """A pre-norm residual block; the norms, attention and MLP are each family's own."""

    def __init__(self, norm1: nn.Module, norm2: nn.Module, attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.norm1, self.norm2, self.attn, self.mlp = norm1, norm2, attn, mlp

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, bounds)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config, width: int, bias: bool = False):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        # kept as a Conv3d so the checkpoint's [E, C, T, P, P] weight loads as is
        self.proj = nn.Conv3d(config.in_channels, width, kernel, stride=kernel, bias=bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, C*T*P*P] → [N, E]. A stride-equals-kernel conv over one patch is a matmul."""
        weight = self.proj.weight.flatten(1)  # [E, C*T*P*P], same (C, T, P, P) order as the rows
        return F.linear(pixel_values.to(weight.dtype), weight, self.proj.bias)


class PatchMerger(nn.Module):
    """Each 2x2 merge unit (4 consecutive rows) → one token of the LM's hidden size."""

    def __init__(self, width: int, merge: int, out_size: int, norm: type[nn.Module]):
        super().__init__()
        self.unit_dim = width * merge**2
        self.ln_q = norm(width, eps=NORM_EPS)
        # a Sequential so the keys are mlp.0 / mlp.2 as in the checkpoint
        self.mlp = nn.Sequential(
            nn.Linear(self.unit_dim, self.unit_dim),
            nn.GELU(),
            nn.Linear(self.unit_dim, out_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.unit_dim))  # [N, E] → [U, out_size]


def frame_attention_inputs(
    grids: list[list[int]], merge: int, rotary: VisionRotary, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a tower whose blocks attend over whole frames: the frames' cumulative bounds and the
    patches' rotary cos, sin, in preprocessing order."""
    positions = torch.cat([patch_positions(t, h, w, merge) for t, h, w in grids])
    frames = torch.tensor([h * w for t, h, w in grids for _ in range(t)])
    bounds = F.pad(frames.cumsum(0), (1, 0)).to(device)
    cos, sin = rotary(positions.to(device))
    return bounds, cos, sin


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.patch_embed = PatchEmbed(config, width)
        self.rotary = VisionRotary(config.head_dim, config.rope_theta)
        self.blocks = nn.ModuleList(
            VisionBlock(RMSNorm(width, eps=NORM_EPS), RMSNorm(width, eps=NORM_EPS), VisionAttention(config),
                        SwiGLU(width, config.intermediate_size, bias=True))
            for _ in range(config.depth))
        self.merger = PatchMerger(width, config.spatial_merge_size, config.out_hidden_size, RMSNorm)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*T*P*P], grid_thw [images, 3] (t, h, w in patches)
        → [N / merge^2, out_hidden_size], one row per LM placeholder token, images in order."""
        check_patches(pixel_values, grid_thw, self.config.patch_dim)
        layout = VisionLayout.build(grid_thw.cpu(), self.config).to(pixel_values.device)
        cos, sin = self.rotary(layout.positions)

        x = layout.to_working_order(self.patch_embed(pixel_values))  # [N, E]
        full_attention = set(self.config.fullatt_block_indexes)
        for index, block in enumerate(self.blocks):
            bounds = layout.frame_bounds if index in full_attention else layout.window_bounds
            x = block(x, cos, sin, bounds)
        return layout.units_to_input_order(self.merger(x))
