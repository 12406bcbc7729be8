"""Qwen2.5-Omni's BigVGAN vocoder: log-mel [B, M, T] → 24 kHz waveform [B, T·hop].

conv_pre → for each stage: transposed-conv upsample, then the mean of several AMP residual
blocks (one per kernel size) → anti-aliased SnakeBeta → conv_post → clamp to [-1, 1].
Every activation is anti-aliased: upsample 2x, SnakeBeta, downsample 2x, both resamplers a
12-tap Kaiser-windowed sinc low-pass.

Parameter names equal the checkpoint keys under `token2wav.code2wav_bigvgan_model.`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.token2wav_config import BigVGANConfig


def kaiser_sinc_lowpass(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass filter [kernel_size] with unit DC gain.

    cutoff and half_width are in cycles per sample (0..0.5)."""
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95  # dB, Kaiser's formula
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta, dtype=torch.float32)
    if kernel_size % 2 == 0:
        taps = torch.arange(-half, half) + 0.5
    else:
        taps = torch.arange(kernel_size) - half
    lowpass = 2 * cutoff * window * torch.sinc(2 * cutoff * taps)
    return lowpass / lowpass.sum()


class SnakeBeta(nn.Module):
    """x + 1/β · sin²(α·x), per channel; α and β are stored as logarithms."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        alpha = torch.exp(self.alpha).view(1, -1, 1)
        beta = torch.exp(self.beta).view(1, -1, 1)
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class AntiAliasedSnake(nn.Module):
    """2x upsample → SnakeBeta → 2x downsample, so the nonlinearity's harmonics do not alias."""

    ratio = 2
    taps = 12

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)
        lowpass = kaiser_sinc_lowpass(cutoff=0.5 / self.ratio, half_width=0.6 / self.ratio, kernel_size=self.taps)
        self.register_buffer("lowpass", lowpass.view(1, 1, -1), persistent=False)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] → [B, C, 2T]
        channels = x.shape[1]
        edge = self.taps // self.ratio - 1  # input samples replicated at each end
        x = F.pad(x, (edge, edge), mode="replicate")
        lowpass = self.lowpass.expand(channels, -1, -1)
        x = self.ratio * F.conv_transpose1d(x, lowpass, stride=self.ratio, groups=channels)
        crop_left = edge * self.ratio + (self.taps - self.ratio) // 2
        crop_right = edge * self.ratio + (self.taps - self.ratio + 1) // 2
        return x[..., crop_left:-crop_right]

    def downsample(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, 2T] → [B, C, T]
        channels = x.shape[1]
        x = F.pad(x, (self.taps // 2 - 1, self.taps // 2), mode="replicate")  # even taps: one less on the left
        lowpass = self.lowpass.expand(channels, -1, -1)
        return F.conv1d(x, lowpass, stride=self.ratio, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def same_length_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)


class AMPBlock(nn.Module):
    """Three residual units: x + conv(act(dilated conv(act(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(same_length_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(same_length_conv(channels, kernel_size, 1) for _ in dilations)
        # interleaved in the checkpoint: activations[2i] precedes convs1[i], [2i+1] precedes convs2[i]
        self.activations = nn.ModuleList(AntiAliasedSnake(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            x = x + conv2(self.activations[2 * i + 1](conv1(self.activations[2 * i](x))))
        return x


def log_mel_to_unit_range(log_mel: torch.Tensor, min_db: float = -115.0, db_offset: float = -20.0) -> torch.Tensor:
    """Natural-log mel amplitude → dB (floored at min_db, shifted by db_offset) → [-1, 1]."""
    min_log_amplitude = min_db / 20.0 * math.log(10)
    decibels = 20.0 / math.log(10) * torch.clamp(log_mel, min=min_log_amplitude) + db_offset
    return torch.clamp(2.0 * (decibels - min_db) / -min_db - 1.0, -1.0, 1.0)


class BigVGAN(nn.Module):
    def __init__(self, config: BigVGANConfig):
        super().__init__()
        self.config = config
        channels = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.mel_dim, channels, 7, padding=3)
        # each stage sits in its own one-element ModuleList in the checkpoint (`ups.{i}.0`)
        self.ups = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose1d(channels // 2**i, channels // 2 ** (i + 1), kernel, rate,
                                              padding=(kernel - rate) // 2)])
            for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        self.resblocks = nn.ModuleList(
            AMPBlock(channels // 2 ** (i + 1), kernel, dilations)
            for i in range(len(config.upsample_rates))
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        final_channels = channels // 2 ** len(config.upsample_rates)
        self.activation_post = AntiAliasedSnake(final_channels)
        self.conv_post = nn.Conv1d(final_channels, 1, 7, padding=3, bias=False)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log_mel [B, M, T] → waveform [B, T·hop] in [-1, 1]."""
        x = self.conv_pre(log_mel_to_unit_range(log_mel))
        per_stage = len(self.config.resblock_kernel_sizes)
        for stage, (upsample,) in enumerate(self.ups):
            x = upsample(x)
            blocks = self.resblocks[stage * per_stage:(stage + 1) * per_stage]
            x = sum(block(x) for block in blocks) / per_stage
        waveform = self.conv_post(self.activation_post(x))  # [B, 1, T·hop]
        return torch.clamp(waveform, -1.0, 1.0).squeeze(1)
