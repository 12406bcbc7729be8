"""The Qwen2.5-Omni thinker's audio encoder (a Whisper-style encoder over 128-bin log-mel).

Each audio is cut into chunks of 2 * n_window mel frames (the last one shorter). Per chunk:
conv1 (stride 1) and conv2 (stride 2) halve the frames, sinusoidal positions restart at 0, and
attention stays inside the chunk. After the layers, each audio's tokens are average-pooled in
pairs (dropping an odd last one), normalised and projected to the LM hidden size:
4 mel frames (40 ms) per LM token.

Module names follow the checkpoint (`thinker.audio_tower.*` without the prefix).

Shapes: M = mel bins, F = mel frames, C = chunks, K = 2 * n_window, A = d_model, N = tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.omni_config import AudioEncoderConfig
from omnilive.model.vision import segment_attention


def conv_output_frames(mel_frames: torch.Tensor) -> torch.Tensor:
    """Tokens after the stride-2 conv for the given mel lengths."""
    return (mel_frames - 1) // 2 + 1


def audio_output_tokens(mel_frames: torch.Tensor) -> torch.Tensor:
    """LM tokens the encoder yields for audios of the given mel lengths (after pair pooling)."""
    return conv_output_frames(mel_frames) // 2


def sinusoid_positions(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """[length, channels]: sines of all timescales, then cosines (Whisper's layout)."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2).float())
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def pack_padded_mel(features: torch.Tensor, feature_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch as the HF processor returns it ([B, M, F_max] + [B, F_max] mask)
    → (mel [M, F_total], mel_frames [B]) for `AudioEncoder.forward`."""
    mask = feature_attention_mask.bool()
    return features.transpose(1, 2)[mask].T, mask.sum(-1)


class AudioAttention(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        dim = config.d_model
        self.num_heads = config.encoder_attention_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)  # Whisper's key projection has no bias
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (proj(x).view(n, self.num_heads, -1).transpose(0, 1) for proj in projections)  # [nh, N, D]
        out = segment_attention(q, k, v, bounds)
        return self.out_proj(out.transpose(0, 1).reshape(n, -1))


class AudioEncoderLayer(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.self_attn = AudioAttention(config)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)

    def forward(self, x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), bounds)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class AudioEncoder(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        dim = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        # a fixed table, not in the checkpoint
        self.register_buffer(
            "positional_embedding", sinusoid_positions(config.max_source_positions, dim), persistent=False
        )
        # audio start/end embeddings: in the checkpoint under the encoder, but the LM's
        # prompt carries them as ordinary tokens, so forward never reads them
        self.audio_bos_eos_token = nn.Embedding(2, config.output_dim)
        self.layers = nn.ModuleList(AudioEncoderLayer(config) for _ in range(config.encoder_layers))
        self.ln_post = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, config.output_dim)

    def forward(self, mel: torch.Tensor, mel_frames: torch.Tensor) -> torch.Tensor:
        """mel [M, F_total]: the audios' valid frames concatenated along time;
        mel_frames [audios]: each audio's frame count.
        → [sum(audio_output_tokens(mel_frames)), output_dim], audios in order."""
        if mel.shape[1] != int(mel_frames.sum()):
            raise ValueError(f"mel has {mel.shape[1]} frames but mel_frames sum to {int(mel_frames.sum())}")
        chunk_frames = self._chunk_lengths(mel_frames.cpu())  # [C] mel frames per chunk
        chunks = self._padded_chunks(mel, chunk_frames)  # [C, M, K]
        valid = torch.arange(chunks.shape[2], device=mel.device) < chunk_frames.to(mel.device)[:, None]  # [C, K]

        # padding frames are zeroed after conv1 so conv2 sees the same edges as an unpadded chunk
        x = F.gelu(self.conv1(chunks.to(self.conv1.weight.dtype))) * valid[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [C, K/2, A]
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)

        chunk_tokens = conv_output_frames(chunk_frames)  # [C]
        keep = torch.arange(x.shape[1])[None, :] < chunk_tokens[:, None]  # [C, K/2]
        x = x[keep.to(x.device)]  # [N, A], chunks in order
        bounds = F.pad(chunk_tokens.cumsum(0), (1, 0)).to(x.device)
        for layer in self.layers:
            x = layer(x, bounds)

        x = self._pool_pairs(x, conv_output_frames(mel_frames.cpu()))
        return self.proj(self.ln_post(x))

    def _chunk_lengths(self, mel_frames: torch.Tensor) -> torch.Tensor:
        """[audios] → [C]: full chunks of K frames, then each audio's remainder."""
        chunk = 2 * self.config.n_window
        lengths = []
        for frames in mel_frames.tolist():
            lengths += [chunk] * (frames // chunk) + ([frames % chunk] if frames % chunk else [])
        return torch.tensor(lengths, dtype=torch.long)

    @staticmethod
    def _padded_chunks(mel: torch.Tensor, chunk_frames: torch.Tensor) -> torch.Tensor:
        """[M, F_total] → [C, M, K] right-padded with zeros."""
        pieces = mel.T.split(chunk_frames.tolist())  # C x [frames, M]
        return nn.utils.rnn.pad_sequence(pieces, batch_first=True).transpose(1, 2)

    @staticmethod
    def _pool_pairs(x: torch.Tensor, tokens_per_audio: torch.Tensor) -> torch.Tensor:
        """Average consecutive token pairs within each audio; an odd last token is dropped."""
        pooled = []
        for audio in x.split(tokens_per_audio.tolist()):
            pairs = audio.shape[0] // 2
            pooled.append(audio[: 2 * pairs].view(pairs, 2, -1).mean(1))
        return torch.cat(pooled)
