"""Configs of the Qwen2.5-Omni thinker's media encoders, read from the checkpoint's config.json.

Field names are the checkpoint's own keys (`thinker_config.vision_config`,
`thinker_config.audio_config`); defaults are those `transformers` uses when a key is missing,
so a partial config means the same thing here as there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Self


def _known_keys(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in raw.items() if key in names}


def vision_config_values(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """The keys of a `vision_config` that `cls` has fields for; newer configs nest the rotary
    base under rope_parameters."""
    values = _known_keys(cls, raw)
    rope = raw.get("rope_parameters") or {}
    if "rope_theta" in rope:
        values["rope_theta"] = rope["rope_theta"]
    return values


class PatchGeometry:
    """What a vision config with in_channels, temporal_patch_size and patch_size says of its patches."""

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch row of pixel_values: C * T * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class VisionEncoderConfig(PatchGeometry):
    depth: int = 32
    hidden_size: int = 3584
    hidden_act: str = "silu"
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    # window edge in pixels: window attention runs over (window_size / patch_size)^2 patches
    window_size: int = 112
    out_hidden_size: int = 3584
    # blocks that attend over a whole frame; all others attend within their window
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fullatt_block_indexes", tuple(self.fullatt_block_indexes))
        if self.hidden_act != "silu":
            raise ValueError(f"vision MLP activation must be silu (SwiGLU), got {self.hidden_act!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError("vision hidden_size must be divisible by num_heads")
        if self.head_dim % 4:
            raise ValueError("vision head_dim must be divisible by 4 (2D rotary over h and w)")
        if self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ValueError("window_size must be a multiple of patch_size * spatial_merge_size")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def window_units(self) -> int:
        """Window edge counted in merge units (2x2 patch groups)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        return cls(**vision_config_values(cls, raw))


@dataclass(frozen=True)
class AudioEncoderConfig:
    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    activation_function: str = "gelu"
    max_source_positions: int = 1500
    # attention runs within chunks of 2 * n_window mel frames (n_window tokens after the convs)
    n_window: int = 100
    output_dim: int = 3584

    def __post_init__(self) -> None:
        if self.activation_function != "gelu":
            raise ValueError(f"audio MLP activation must be gelu, got {self.activation_function!r}")
        if self.d_model % self.encoder_attention_heads:
            raise ValueError("audio d_model must be divisible by encoder_attention_heads")
        if self.d_model % 2:
            raise ValueError("audio d_model must be even (sinusoidal positions)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        return cls(**_known_keys(cls, raw))


def encoder_configs(checkpoint_config: dict[str, Any]) -> tuple[VisionEncoderConfig, AudioEncoderConfig]:
    """The two encoder configs from a Qwen2.5-Omni config.json (full model or thinker only)."""
    thinker = checkpoint_config.get("thinker_config", checkpoint_config)
    return (
        VisionEncoderConfig.from_dict(thinker.get("vision_config", {})),
        AudioEncoderConfig.from_dict(thinker.get("audio_config", {})),
    )
