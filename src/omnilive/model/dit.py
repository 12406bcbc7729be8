"""Qwen2.5-Omni token2wav DiT: a flow-matching transformer that predicts the velocity field
turning Gaussian noise into a mel spectrogram, conditioned on codec tokens and a speaker.

Conditioning per mel frame is the concatenation of
  - an ECAPA-TDNN embedding of the speaker's reference mel (`enc_dim`),
  - the codec token embedding, each token repeated `repeats` times (`emb_dim`),
  - the speaker x-vector (`enc_emb_dim`, spk_dict.pt "cond").
It does not depend on the ODE time or the noisy mel, so `conditioning()` builds it once per
utterance and `forward()` runs once per ODE evaluation.

Attention is block-local: frames are grouped in blocks of `block_size`; every layer sees its own
block, a few layers also the previous (look_backward_layers) or next (look_ahead_layers) block.
A frame's output therefore depends on at most len(look_ahead_layers) blocks of future frames,
which is what makes chunked (streaming) synthesis with bounded look-ahead possible.

Shapes: B = batch (2x with classifier-free guidance), T = mel frames, N = codec tokens,
H = hidden size, M = mel bins, C = channels, h = heads, D = head dim.
Parameter names equal the checkpoint keys under `token2wav.code2wav_dit_model.`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.token2wav_config import DiTConfig


class TimeDelayBlock(nn.Module):
    """Conv1d ('same' length, reflect padding) + ReLU: the TDNN layer of ECAPA."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, dilation=dilation, padding="same", padding_mode="reflect"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] → [B, C', T]
        return F.relu(self.conv(x))


class Res2NetBlock(nn.Module):
    """Split channels in `scale` groups; group i is convolved after adding group i-1's output."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        width = channels // scale
        self.blocks = nn.ModuleList(TimeDelayBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, *rest = torch.chunk(x, self.scale, dim=1)
        outputs = [first]
        for i, (block, part) in enumerate(zip(self.blocks, rest)):
            outputs.append(block(part if i == 0 else part + outputs[-1]))
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, se_channels, 1)
        self.conv2 = nn.Conv1d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(x.mean(dim=2, keepdim=True)))))  # [B, C, 1]
        return x * gate


class SERes2NetBlock(nn.Module):
    def __init__(self, channels: int, scale: int, se_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.tdnn1 = TimeDelayBlock(channels, channels, 1, 1)
        self.res2net_block = Res2NetBlock(channels, scale, kernel_size, dilation)
        self.tdnn2 = TimeDelayBlock(channels, channels, 1, 1)
        self.se_block = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def weighted_mean_std(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, C, T], weights [B, 1 or C, T] summing to 1 over T → mean, std [B, C]."""
    mean = (weights * x).sum(dim=2)
    variance = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, torch.sqrt(variance.clamp(min=1e-12))


class AttentiveStatisticsPooling(nn.Module):
    """Per-channel attention over time (keyed on the utterance's global mean/std) → [mean; std]."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TimeDelayBlock(channels * 3, attention_channels, 1, 1)
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] → [B, 2C]
        frames = x.shape[2]
        uniform = torch.full((x.shape[0], 1, frames), 1.0 / frames, dtype=x.dtype, device=x.device)
        mean, std = weighted_mean_std(x, uniform)
        context = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        attention = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)  # [B, C, T]
        return torch.cat(weighted_mean_std(x, attention), dim=1)


class SpeakerEncoder(nn.Module):
    """ECAPA-TDNN: reference mel [B, T, M] → speaker embedding [B, enc_dim]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        channels, kernels, dilations = config.enc_channels, config.enc_kernel_sizes, config.enc_dilations
        self.blocks = nn.ModuleList([TimeDelayBlock(config.mel_dim, channels[0], kernels[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            if channels[i] != channels[i - 1]:
                raise ValueError("SE-Res2Net blocks are residual: enc_channels[:-1] must be equal")
            self.blocks.append(
                SERes2NetBlock(channels[i], config.enc_res2net_scale, config.enc_se_channels, kernels[i], dilations[i])
            )
        # multi-layer feature aggregation over the SE-Res2Net outputs
        self.mfa = TimeDelayBlock(channels[-1], channels[-1], kernels[-1], dilations[-1])
        self.asp = AttentiveStatisticsPooling(channels[-1], config.enc_attention_channels)
        self.fc = nn.Conv1d(channels[-1] * 2, config.enc_dim, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.transpose(1, 2)  # [B, M, T]
        block_outputs = []
        for block in self.blocks:
            x = block(x)
            block_outputs.append(x)
        x = self.mfa(torch.cat(block_outputs[1:], dim=1))
        return self.fc(self.asp(x).unsqueeze(2)).squeeze(2)


class TimestepEmbedding(nn.Module):
    """ODE time t in [0, 1] → sinusoidal features (of 1000·t) → MLP → [B, H]."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        half = frequency_dim // 2
        self.register_buffer(
            "frequencies", torch.exp(torch.arange(half).float() * -(math.log(10000) / (half - 1))), persistent=False
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, time: torch.Tensor) -> torch.Tensor:  # [B] → [B, H]
        angles = (1000 * time).unsqueeze(1) * self.frequencies.unsqueeze(0)
        return self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1).to(time.dtype))


class CodecEmbedding(nn.Module):
    def __init__(self, num_embeds: int, emb_dim: int, repeats: int):
        super().__init__()
        self.codec_embed = nn.Embedding(num_embeds + 1, emb_dim)
        self.repeats = repeats

    def forward(self, codes: torch.Tensor) -> torch.Tensor:  # [B, N] → [B, N·repeats, emb_dim]
        return torch.repeat_interleave(self.codec_embed(codes), self.repeats, dim=1)


class InputEmbedding(nn.Module):
    """Projects [noisy mel; conditioning] to the hidden size; owns the speaker encoder."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.proj = nn.Linear(config.mel_dim + config.enc_dim + config.emb_dim + config.enc_emb_dim, config.hidden_size)
        self.spk_encoder = SpeakerEncoder(config)


class AdaLayerNormZero(nn.Module):
    """LayerNorm modulated by the time embedding; also yields the gates/shift/scale of the MLP."""

    def __init__(self, hidden_size: int, num_outputs: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size * num_outputs)
        self.num_outputs = num_outputs

    def modulation(self, time_embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:  # each [B, 1, H]
        return tuple(p.unsqueeze(1) for p in self.linear(F.silu(time_embedding)).chunk(self.num_outputs, dim=1))


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def block_attention_mask(num_frames: int, block_size: int, look_backward: int, look_ahead: int,
                         device: torch.device, first_frame: int | torch.Tensor = 0) -> torch.Tensor:
    """[T, T] bool, True where frame i may attend to frame j (block(j) - block(i) in [-back, ahead]);
    frames are numbered from `first_frame` (a window of a longer utterance). With first_frame
    a [B] tensor (one window per row): [B, 1, T, T]."""
    block = frame_positions(first_frame, num_frames, device) // block_size  # [T] or [B, T]
    block_offset = block.unsqueeze(-2) - block.unsqueeze(-1)
    mask = (block_offset >= -look_backward) & (block_offset <= look_ahead)
    return mask if mask.dim() == 2 else mask.unsqueeze(1)


def frame_positions(first_frame: int | torch.Tensor, num_frames: int, device: torch.device) -> torch.Tensor:
    """Absolute frame numbers of a window: [T] from an int, [B, T] from a [B] tensor."""
    offsets = torch.arange(num_frames, device=device)
    if isinstance(first_frame, torch.Tensor):
        return first_frame.to(device).reshape(-1, 1) + offsets
    return first_frame + offsets


def rotate_interleaved_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on pairs (x[2i], x[2i+1]); x [..., T, D], cos/sin [T, D/2]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)


class DiTAttention(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        inner = config.num_attention_heads * config.head_dim
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.to_q = nn.Linear(config.hidden_size, inner)
        self.to_k = nn.Linear(config.hidden_size, inner)
        self.to_v = nn.Linear(config.hidden_size, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, config.hidden_size)])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = x.shape
        q, k, v = (proj(x).view(batch, frames, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))  # [B, h, T, D]
        # The checkpoint was trained with RoPE on the first head only (interleaved pair layout).
        q = torch.cat([rotate_interleaved_pairs(q[:, :1], cos, sin), q[:, 1:]], dim=1)
        k = torch.cat([rotate_interleaved_pairs(k[:, :1], cos, sin), k[:, 1:]], dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, h, T, D]
        return self.to_out[0](out.transpose(1, 2).reshape(batch, frames, self.heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, mult: int):
        super().__init__()
        # index 2 held the (training-only) dropout; keeping the slot keeps checkpoint key `ff.3`
        self.ff = nn.Sequential(
            nn.Linear(hidden_size, hidden_size * mult), nn.GELU(approximate="tanh"), nn.Identity(),
            nn.Linear(hidden_size * mult, hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig, look_backward: int, look_ahead: int):
        super().__init__()
        self.attn_norm = AdaLayerNormZero(config.hidden_size, 6)
        self.attn = DiTAttention(config)
        self.ff = FeedForward(config.hidden_size, config.ff_mult)
        self.look_backward, self.look_ahead = look_backward, look_ahead

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        shift_attn, scale_attn, gate_attn, shift_ff, scale_ff, gate_ff = self.attn_norm.modulation(time_embedding)
        x = x + gate_attn * self.attn(layer_norm(x) * (1 + scale_attn) + shift_attn, cos, sin, mask)
        return x + gate_ff * self.ff(layer_norm(x) * (1 + scale_ff) + shift_ff)


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.time_embed = TimestepEmbedding(config.hidden_size)
        self.text_embed = CodecEmbedding(config.num_embeds, config.emb_dim, config.repeats)
        self.input_embed = InputEmbedding(config)
        self.transformer_blocks = nn.ModuleList(
            DiTBlock(config, look_backward=int(i in config.look_backward_layers),
                     look_ahead=int(i in config.look_ahead_layers))
            for i in range(config.num_hidden_layers)
        )
        self.norm_out = AdaLayerNormZero(config.hidden_size, 2)
        self.proj_out = nn.Linear(config.hidden_size, config.mel_dim)
        exponents = torch.arange(0, config.head_dim, 2).float() / config.head_dim
        self.register_buffer("inv_freq", 1.0 / (config.rope_theta ** exponents), persistent=False)  # [D/2]

    def conditioning(self, codes: torch.Tensor, speaker_embedding: torch.Tensor, reference_mel: torch.Tensor,
                     with_unconditional: bool) -> torch.Tensor:
        """codes [B, N], speaker_embedding [B, enc_emb_dim], reference_mel [B, T_ref, M]
        → per-frame conditioning [B, T, enc_dim + emb_dim + enc_emb_dim], T = N·repeats.

        With `with_unconditional` the batch doubles: rows B.. are the classifier-free-guidance
        "null" condition (zero speaker, zero reference mel, every code replaced by 0)."""
        if with_unconditional:
            codes = torch.cat([codes, torch.zeros_like(codes)])
            speaker_embedding = torch.cat([speaker_embedding, torch.zeros_like(speaker_embedding)])
            reference_mel = torch.cat([reference_mel, torch.zeros_like(reference_mel)])
        code_embedding = self.text_embed(codes)  # [B, T, emb_dim]
        frames = code_embedding.shape[1]
        if frames > self.config.max_position_embeddings:
            raise ValueError(f"{frames} mel frames exceed the DiT's max_position_embeddings "
                             f"({self.config.max_position_embeddings}); synthesise shorter chunks")
        speaker_features = self.input_embed.spk_encoder(reference_mel)  # [B, enc_dim]
        return torch.cat([
            speaker_features.unsqueeze(1).expand(-1, frames, -1),
            code_embedding,
            speaker_embedding.unsqueeze(1).expand(-1, frames, -1),
        ], dim=-1)

    def forward(self, noisy_mel: torch.Tensor, time: torch.Tensor, conditioning: torch.Tensor,
                first_frame: int | torch.Tensor = 0) -> torch.Tensor:
        """noisy_mel [B, T, M], time [] or [B], conditioning [B, T, *] → velocity [B, T, M].

        first_frame: absolute position of frame 0 when the input is a window of a longer
        utterance (streaming), so RoPE angles and attention blocks equal the whole-utterance ones;
        a [B] tensor when the rows are windows of different utterances (batched streams)."""
        batch, frames, _ = noisy_mel.shape
        time_embedding = self.time_embed(time.expand(batch))  # [B, H]
        x = self.input_embed.proj(torch.cat([noisy_mel, conditioning], dim=-1))  # [B, T, H]

        positions = frame_positions(first_frame, frames, x.device)  # [T] or [B, T]
        angles = positions.float().unsqueeze(-1) * self.inv_freq  # [T, D/2] or [B, T, D/2]
        if angles.dim() == 3:
            angles = angles.unsqueeze(1)  # [B, 1, T, D/2]: broadcast over the rotated head
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        masks: dict[tuple[int, int], torch.Tensor] = {}
        for block in self.transformer_blocks:
            window = (block.look_backward, block.look_ahead)
            if window not in masks:
                masks[window] = block_attention_mask(frames, self.config.block_size, *window, x.device, first_frame)
            x = block(x, time_embedding, cos, sin, masks[window])

        scale, shift = self.norm_out.modulation(time_embedding)
        return self.proj_out(layer_norm(x) * (1 + scale) + shift)
