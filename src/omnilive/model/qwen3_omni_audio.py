"""Qwen3-Omni's AuT audio encoder (`thinker.audio_tower.*`) over 128-bin log-mel frames.

What it does, per call (all audios of one prompt together, as transformers encodes them):

1. each audio is cut into chunks of 2 * n_window mel frames (the last one shorter); every
   chunk is right-padded with zeros to the longest chunk of the call;
2. three 3x3 stride-2 Conv2d over (mel bins, frames), each followed by GELU, shrink both axes 8x
   (100 frames → 13 tokens); `conv_out` (no bias) maps channels x remaining bins to d_model;
3. sinusoidal positions are added per chunk (they restart at 0 in every chunk) and the padded
   tail of each chunk is dropped;
4. the encoder layers (Whisper-style, pre-LayerNorm, GELU) attend within windows of
   n_window_infer / (2 * n_window) chunks of one audio (the last window of an audio shorter);
5. ln_post → proj1 → GELU → proj2 (output_dim = the LM's hidden size): one LM token per
   8 mel frames (80 ms), no pooling.

The padding in (1) is visible to the convolutions (the GELU of a zero-padded region is not zero),
so a chunk's last tokens depend on the longest chunk encoded with it; we keep that, to equal the
reference on the same inputs.

Shapes: M mel bins, F frames, C chunks, K longest chunk, A d_model, N tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.audio import AudioEncoderLayer, sinusoid_positions
from omnilive.model.vision import segment_attention


@dataclass(frozen=True)
class Qwen3OmniAudioConfig:
    """`thinker_config.audio_config` of a Qwen3-Omni config.json, under its own key names."""

    num_mel_bins: int = 128
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    d_model: int = 1280
    max_source_positions: int = 1500
    n_window: int = 50
    output_dim: int = 3584
    n_window_infer: int = 800
    conv_chunksize: int = 500
    downsample_hidden_size: int = 480
    activation_function: str = "gelu"
    scale_embedding: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{key: value for key, value in raw.items() if key in names})
        if config.activation_function != "gelu" or config.scale_embedding:
            raise NotImplementedError("the AuT encoder takes gelu and no embedding scale")
        return config

    @property
    def chunk_frames(self) -> int:
        return 2 * self.n_window

    @property
    def chunks_per_window(self) -> int:
        return self.n_window_infer // self.chunk_frames


def conv_tokens(frames: torch.Tensor | int) -> torch.Tensor | int:
    """Frames left after the three stride-2 convolutions (0 stays 0)."""
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    return frames


def aut_output_tokens(mel_frames: torch.Tensor | int, n_window: int = 50) -> torch.Tensor | int:
    """LM tokens the encoder yields for audios of this many mel frames (10 ms each)."""
    full, rest = mel_frames // (2 * n_window), mel_frames % (2 * n_window)
    return full * conv_tokens(2 * n_window) + conv_tokens(rest)


class AuTAttention(nn.Module):
    def __init__(self, config: Qwen3OmniAudioConfig):
        super().__init__()
        dim = config.d_model
        self.num_heads = config.encoder_attention_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)  # with a bias, unlike Whisper's
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (proj(x).view(n, self.num_heads, -1).transpose(0, 1)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(segment_attention(q, k, v, bounds).transpose(0, 1).reshape(n, -1))


class AuTLayer(AudioEncoderLayer):
    """Qwen2.5-Omni's encoder layer with AuT's attention (a key bias)."""

    def __init__(self, config: Qwen3OmniAudioConfig):
        super().__init__(config)
        self.self_attn = AuTAttention(config)


class Qwen3OmniAudioEncoder(nn.Module):
    def __init__(self, config: Qwen3OmniAudioConfig):
        super().__init__()
        self.config = config
        channels = config.downsample_hidden_size
        self.conv2d1 = nn.Conv2d(1, channels, 3, 2, padding=1)
        self.conv2d2 = nn.Conv2d(channels, channels, 3, 2, padding=1)
        self.conv2d3 = nn.Conv2d(channels, channels, 3, 2, padding=1)
        bins = conv_tokens(config.num_mel_bins)
        self.conv_out = nn.Linear(channels * bins, config.d_model, bias=False)
        # a fixed table, not in the checkpoint (rebuilt after loading: `reset_positions`)
        self.register_buffer("positional_embedding", sinusoid_positions(config.max_source_positions, config.d_model),
                             persistent=False)
        self.layers = nn.ModuleList(AuTLayer(config) for _ in range(config.encoder_layers))
        self.ln_post = nn.LayerNorm(config.d_model)
        self.proj1 = nn.Linear(config.d_model, config.d_model)
        self.proj2 = nn.Linear(config.d_model, config.output_dim)

    def reset_positions(self) -> None:
        c = self.config
        with torch.no_grad():
            table = sinusoid_positions(c.max_source_positions, c.d_model)
            self.positional_embedding.copy_(table.to(self.positional_embedding))

    def chunk_lengths(self, mel_frames: torch.Tensor) -> torch.Tensor:
        """[audios] → [C] mel frames per chunk: full chunks, then each audio's remainder."""
        chunk = self.config.chunk_frames
        lengths = []
        for frames in mel_frames.tolist():
            lengths += [chunk] * (frames // chunk) + ([frames % chunk] if frames % chunk else [])
        return torch.tensor(lengths, dtype=torch.long)

    def forward(self, mel: torch.Tensor, mel_frames: torch.Tensor) -> torch.Tensor:
        """mel [M, F_total]: the audios' frames concatenated along time; mel_frames [audios].
        → [sum(aut_output_tokens(mel_frames)), output_dim], audios in order."""
        c = self.config
        mel_frames = mel_frames.cpu()
        if mel.shape[1] != int(mel_frames.sum()):
            raise ValueError(f"mel has {mel.shape[1]} frames but mel_frames sum to {int(mel_frames.sum())}")
        lengths = self.chunk_lengths(mel_frames)
        pieces = mel.T.split(lengths.tolist())  # C x [frames, M]
        chunks = nn.utils.rnn.pad_sequence(pieces, batch_first=True).transpose(1, 2)[:, None]  # [C, 1, M, K]
        chunks = chunks.to(self.conv2d1.weight.dtype)
        outputs = []
        for part in chunks.split(c.conv_chunksize):  # bounded conv memory on long audio
            x = F.gelu(self.conv2d1(part))
            x = F.gelu(self.conv2d2(x))
            outputs.append(F.gelu(self.conv2d3(x)))
        x = torch.cat(outputs)  # [C, channels, bins, K/8]
        x = self.conv_out(x.permute(0, 3, 1, 2).flatten(2))  # [C, K/8, A]
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        tokens = conv_tokens(lengths)  # [C]
        keep = torch.arange(x.shape[1])[None] < tokens[:, None]
        x = x[keep.to(x.device)]  # [N, A]
        bounds = self._window_bounds(mel_frames, int(tokens.max())).to(x.device)
        for layer in self.layers:
            x = layer(x, bounds)
        return self.proj2(F.gelu(self.proj1(self.ln_post(x))))

    def _window_bounds(self, mel_frames: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
        """Cumulative token offsets of the attention windows: each audio's tokens cut every
        chunks_per_window x (the call's longest chunk in tokens)."""
        window = chunk_tokens * self.config.chunks_per_window
        sizes = []
        for tokens in aut_output_tokens(mel_frames, self.config.n_window).tolist():
            sizes += [window] * (tokens // window) + ([tokens % window] if tokens % window else [])
        return F.pad(torch.tensor(sizes).cumsum(0), (1, 0))


def audio_placeholder_count(mel_frames: int, n_window: int = 50) -> int:
    """<|audio_pad|> tokens a prompt needs for an audio of this many mel frames."""
    return int(aut_output_tokens(mel_frames, n_window))
