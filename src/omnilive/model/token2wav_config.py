"""Configuration of Qwen2.5-Omni's token2wav: the DiT (codec tokens → mel) and BigVGAN (mel → wave).

Field names are the checkpoint's config.json keys (`token2wav_config.dit_config` /
`.bigvgan_config`); defaults are the Qwen2.5-Omni-7B values. `from_dict` ignores unknown keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Older Qwen2.5-Omni config.json files name the DiT sizes as in the original F5-TTS code.
_DIT_LEGACY_NAMES = {"dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads"}


def _as_tuples(value: Any) -> Any:
    """JSON lists → tuples (nested), so the frozen configs are hashable and immutable."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def _known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: _as_tuples(v) for k, v in d.items() if k in names}


@dataclass(frozen=True)
class DiTConfig:
    hidden_size: int = 1024
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    head_dim: int = 64
    ff_mult: int = 2
    emb_dim: int = 512  # codec token embedding width
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768  # longest mel (in frames) the DiT accepts
    block_size: int = 24  # mel frames per attention block
    look_ahead_layers: tuple[int, ...] = (10,)  # layers that also see the next block
    look_backward_layers: tuple[int, ...] = (0, 20)  # layers that also see the previous block
    repeats: int = 2  # mel frames per codec token
    num_embeds: int = 8193  # codec vocabulary (the embedding table has one more row)
    mel_dim: int = 80
    enc_emb_dim: int = 192  # speaker x-vector width (spk_dict.pt "cond")
    enc_dim: int = 128  # ECAPA speaker-encoder output width (from the reference mel)
    enc_channels: tuple[int, ...] = (256, 256, 256, 256, 768)
    enc_kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    enc_dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    enc_attention_channels: int = 64
    enc_res2net_scale: int = 2
    enc_se_channels: int = 64

    def __post_init__(self) -> None:
        lengths = {len(self.enc_channels), len(self.enc_kernel_sizes), len(self.enc_dilations)}
        if len(lengths) != 1:
            raise ValueError("enc_channels, enc_kernel_sizes and enc_dilations must have the same length")
        if sum(self.enc_channels[1:-1]) != self.enc_channels[-1]:
            raise ValueError("enc_channels[-1] must equal the sum of the SE-Res2Net block widths")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        d = dict(d)
        for legacy, name in _DIT_LEGACY_NAMES.items():
            if legacy in d and name not in d:
                d[name] = d[legacy]
        rope = d.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise NotImplementedError(f"DiT rope type {rope['rope_type']!r} is not supported")
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        return cls(**_known_fields(cls, d))


@dataclass(frozen=True)
class BigVGANConfig:
    mel_dim: int = 80
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (5, 3, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 7, 4, 4, 4, 4)

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (240 → 100 frames/s at 24 kHz)."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BigVGANConfig:
        return cls(**_known_fields(cls, d))


@dataclass(frozen=True)
class Token2WavConfig:
    dit_config: DiTConfig = DiTConfig()
    bigvgan_config: BigVGANConfig = BigVGANConfig()
    sample_rate: int = 24000

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Token2WavConfig:
        """From `token2wav_config`, or from the whole Qwen2.5-Omni config.json that holds it."""
        d = d.get("token2wav_config", d)
        return cls(
            dit_config=DiTConfig.from_dict(d.get("dit_config") or {}),
            bigvgan_config=BigVGANConfig.from_dict(d.get("bigvgan_config") or {}),
        )
