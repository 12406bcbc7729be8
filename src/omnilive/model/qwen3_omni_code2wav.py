"""Qwen3-Omni Code2Wav: codec frames (12.5 Hz, `num_quantizers` codes each) → 24 kHz waveform.

    codes [B, Q, T] ─ mean of the Q code embeddings ─▶ [B, T, H]
      ─ pre_transformer: causal sliding-window attention (each frame sees `sliding_window`
        frames, itself included), layer-scaled residuals ─▶ upsample: per ratio a transposed
        conv (kernel = stride) and a ConvNeXt block ─▶ decoder: a causal conv, per rate a
        SnakeBeta + transposed conv (kernel 2·rate) + 3 dilated residual units, SnakeBeta,
        a causal conv to one channel ─ clamp ±1 ─▶ wav [B, 1, samples]

Everything is causal but the decoder's transposed convs, whose output block m also reads
input m + 1; the reference trims the last block (it has no next input), so an utterance
comes out a little shorter than T · total_upsample. So the model streams exactly:
`Code2WavStream` keeps, per layer, what the next chunk needs (the last W-1 keys and values of
each attention layer, zeros before the utterance began, the last (kernel-1)·dilation inputs of
each causal conv, the last input of each transposed conv whose block waits for the next one).
Chunk by chunk, the samples equal the whole decode's, and nothing is left to flush at the end.
Several streams' chunks of one length decode as one batch (`decode_joined`), each row at its
own frame.

On a CPU the transposed convs run as one GEMM each plus an overlap-add (PyTorch's own path
there is `slow_conv_transpose2d`), as do the causal convs where PyTorch would take its slow path.

Parameter names equal the checkpoint keys under `code2wav.`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary
from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.weights import empty_model, load_state_dict_strict, resolve_dtype

CODE2WAV_PREFIX = "code2wav."
SAMPLE_RATE = 24000
# PyTorch's CPU conv takes its slow path (`_slow_conv2d_forward`) for a batch of one input of
# under this many elements (its mkldnn heuristic); there one GEMM is ~2x faster (measured).
SLOW_CONV_NUMEL = 20480


@dataclass(frozen=True)
class Qwen3OmniCode2WavConfig:
    """`code2wav_config` of a Qwen3-Omni config.json (its names, transformers' defaults)."""

    codebook_size: int = 2048
    hidden_size: int = 1024
    max_position_embeddings: int = 8000
    rope_theta: float = 10000.0
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    attention_bias: bool = False
    sliding_window: int = 72
    intermediate_size: int = 3072
    layer_scale_initial_scale: float = 0.01
    rms_norm_eps: float = 1e-5
    num_hidden_layers: int = 8
    num_quantizers: int = 16
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    upsampling_ratios: tuple[int, ...] = (2, 2)
    decoder_dim: int = 1536

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """From a whole Qwen3-Omni config.json dict or its `code2wav_config`."""
        d = dict(raw.get("code2wav_config", raw))
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        for name in ("upsample_rates", "upsampling_ratios"):
            if name in d:
                d[name] = tuple(d[name])
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def total_upsample(self) -> int:
        """Waveform samples per frame (1920 at 24 kHz: 12.5 frames a second)."""
        return math.prod(self.upsample_rates + self.upsampling_ratios)


class Code2WavStream:
    """What one utterance's next chunk needs from the chunks before it, per layer (by module)."""

    def __init__(self) -> None:
        self.tails: dict[int, torch.Tensor] = {}
        self.frames = 0  # frames decoded so far: the next one's rotary position

    def take(self, module: nn.Module) -> torch.Tensor | None:
        return self.tails.get(id(module))

    def keep(self, module: nn.Module, tail: torch.Tensor) -> None:
        self.tails[id(module)] = tail

    def first_positions(self, batch: int) -> list[int]:
        """Each row's frames decoded so far (every row of one stream is at the same frame)."""
        return [self.frames] * batch

    def advance(self, frames: int) -> None:
        self.frames += frames


class JoinedCode2WavStreams(Code2WavStream):
    """Several utterances' streams (one batch row each) decoded as one batch: each layer takes
    their tails concatenated and keeps each row's part back in its own stream. The rows' chunks
    have one length, and either every row has begun or none has (a transposed conv holds an
    input only once its stream has begun)."""

    def __init__(self, rows: list[Code2WavStream]) -> None:
        super().__init__()
        if len({row.frames == 0 for row in rows}) > 1:
            raise ValueError("a joined decode needs its streams all begun or all new")
        self.rows = rows

    def take(self, module: nn.Module) -> torch.Tensor | None:
        tails = [row.take(module) for row in self.rows]
        if all(tail is None for tail in tails):
            return None
        if any(tail is None for tail in tails):
            raise ValueError("streams with and without a tail for one layer cannot be joined")
        return torch.cat(tails, dim=-4 if isinstance(module, SlidingAttention) else 0)

    def keep(self, module: nn.Module, tail: torch.Tensor) -> None:
        dim = -4 if isinstance(module, SlidingAttention) else 0
        for row, part in zip(self.rows, tail.split(1, dim=dim)):
            row.keep(module, part)

    def first_positions(self, batch: int) -> list[int]:
        if batch != len(self.rows):
            raise ValueError(f"{len(self.rows)} joined streams, {batch} rows of codes")
        return [row.frames for row in self.rows]

    def advance(self, frames: int) -> None:
        for row in self.rows:
            row.frames += frames


def decode_joined(model: Qwen3OmniCode2Wav, codes: list[torch.Tensor],
                  streams: list[Code2WavStream]) -> list[torch.Tensor]:
    """Each stream's next chunk (codes [1, Q, T] each, one T) decoded as one batch: per stream
    its wav [1, 1, n], as it would come alone (up to float rounding: the GEMMs' shapes differ)."""
    if len(codes) == 1:
        return [model(codes[0], streams[0])]
    wav = model(torch.cat(codes), JoinedCode2WavStreams(streams))
    return list(wav.split(1))


class CausalConv(nn.Module):
    """A stride-1 conv over the past only (left zero padding of (kernel-1)·dilation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)
        self.context = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor, stream: Code2WavStream | None = None) -> torch.Tensor:
        if not x.shape[-1]:
            return x.new_zeros(*x.shape[:-2], self.conv.out_channels, 0)
        past = stream.take(self) if stream is not None else None
        if past is None:
            past = x.new_zeros(*x.shape[:-1], self.context)
        x = torch.cat([past, x], dim=-1)
        if stream is not None:
            stream.keep(self, x[..., x.shape[-1] - self.context:])
        if self.conv.groups == 1 and x.shape[0] == 1 and x.numel() < SLOW_CONV_NUMEL:
            return self._as_matmul(x)
        return self.conv(x)

    def _as_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """im2col and one GEMM."""
        weight, kernel, dilation = self.conv.weight, self.conv.kernel_size[0], self.conv.dilation[0]
        columns = x.unfold(-1, self.context + 1, 1)[..., ::dilation]  # [B, C_in, T, K]
        B, _, T, _ = columns.shape
        out = columns.permute(0, 2, 1, 3).reshape(B * T, -1) @ weight.reshape(weight.shape[0], -1).T
        if self.conv.bias is not None:
            out = out + self.conv.bias
        return out.view(B, T, -1).transpose(1, 2)


class CausalTransConv(nn.Module):
    """A transposed conv (stride s, kernel s or 2s) trimmed to s output samples per input.
    With kernel 2s an input's block also needs the next input: the last input's block is
    dropped (as the reference trims it), and in a stream that input waits for the next chunk."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        if kernel_size not in (stride, 2 * stride):
            raise ValueError(f"transposed conv kernel {kernel_size} is neither its stride {stride} nor twice it")
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.stride, self.lookahead = stride, kernel_size // stride - 1

    def forward(self, x: torch.Tensor, stream: Code2WavStream | None = None) -> torch.Tensor:
        held = stream.take(self) if stream is not None and self.lookahead else None
        if held is not None:
            x = torch.cat([held, x], dim=-1)
        n = x.shape[-1]
        emit = n - self.lookahead  # blocks whose next input is known
        if stream is not None and self.lookahead:
            stream.keep(self, x[..., emit:])
        if emit <= 0:
            return x.new_zeros(*x.shape[:-2], self.conv.out_channels, 0)
        return self._as_matmul(x, emit)

    def _as_matmul(self, x: torch.Tensor, emit: int) -> torch.Tensor:
        """[n, C_in] @ [C_in, C_out·K] gives every input's K output samples; output block m is
        input m's first s plus (kernel 2s) input m-1's last s. PyTorch's CPU transposed conv
        (`slow_conv_transpose2d`) is several times slower."""
        weight, s = self.conv.weight, self.stride  # weight [C_in, C_out, K]
        B, C_in, n = x.shape
        blocks = (x.transpose(1, 2).reshape(B * n, C_in) @ weight.reshape(C_in, -1)).view(B, n, -1, weight.shape[-1])
        if self.lookahead:
            blocks = blocks[:, 1:, :, :s] + blocks[:, :emit, :, s:]
        out = blocks.permute(0, 2, 1, 3).reshape(B, weight.shape[1], emit * s)
        return out + self.conv.bias[:, None] if self.conv.bias is not None else out


class SnakeBeta(nn.Module):
    """x + sin²(x·e^α) / e^β per channel (`alpha`, `beta` are logarithms)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha.exp()[:, None], self.beta.exp()[:, None]
        return x + 1.0 / (beta + 1e-9) * torch.sin(x * alpha).pow(2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = CausalConv(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, stream: Code2WavStream | None = None) -> torch.Tensor:
        h = self.dwconv(x, stream).transpose(1, 2)
        h = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + h.transpose(1, 2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv(dim, dim, 1)

    def forward(self, x: torch.Tensor, stream: Code2WavStream | None = None) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x), stream)), stream)


class DecoderBlock(nn.Module):
    """`block`: SnakeBeta, transposed conv (×rate), residual units of dilation 1, 3, 9."""

    def __init__(self, in_dim: int, out_dim: int, rate: int):
        super().__init__()
        self.block = nn.ModuleList([SnakeBeta(in_dim), CausalTransConv(in_dim, out_dim, 2 * rate, rate),
                                    *(ResidualUnit(out_dim, dilation) for dilation in (1, 3, 9))])

    def forward(self, x: torch.Tensor, stream: Code2WavStream | None = None) -> torch.Tensor:
        x = self.block[0](x)
        for layer in self.block[1:]:
            x = layer(x, stream)
        return x


class LayerScale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class SlidingAttention(nn.Module):
    """Causal attention over the last `window` frames, keys/values of earlier chunks from the stream."""

    def __init__(self, config: Qwen3OmniCode2WavConfig):
        super().__init__()
        heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.heads, self.kv_heads, self.head_dim, self.window = heads, kv_heads, d, config.sliding_window
        self.q_proj = nn.Linear(config.hidden_size, heads * d, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_heads * d, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_heads * d, bias=config.attention_bias)
        self.o_proj = nn.Linear(heads * d, config.hidden_size, bias=config.attention_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                stream: Code2WavStream | None = None, past_frames: torch.Tensor | None = None) -> torch.Tensor:
        """In a stream, the past keys/values are always the last W-1 slots (zeros before the
        utterance began, masked out by `past_frames` [B], each row's frames so far), so streams at
        different frames share one batch."""
        B, T, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, T, self.heads, -1).transpose(1, 2), cos, sin)
        k = apply_rotary(self.k_proj(x).view(B, T, self.kv_heads, -1).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(B, T, self.kv_heads, -1).transpose(1, 2)
        P = 0
        if stream is not None:
            P = self.window - 1
            past = stream.take(self)
            if past is None:
                past = k.new_zeros(2, B, self.kv_heads, P, self.head_dim)
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            stream.keep(self, torch.stack([k[:, :, k.shape[2] - P:], v[:, :, v.shape[2] - P:]]))
        S = k.shape[2]
        query_at = torch.arange(S - T, S, device=x.device)[:, None]
        key_at = torch.arange(S, device=x.device)[None]
        allowed = (key_at <= query_at) & (key_at > query_at - self.window)  # [T, S]
        if P:
            # [B, S]: keys of frames the utterance has had
            begun = key_at >= P - past_frames.clamp(max=P).to(x.device)[:, None]
            allowed = allowed[None] & begun[:, None]
            allowed = allowed[:, None]  # [B, 1, T, S]
        groups = self.heads // self.kv_heads
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                             attn_mask=allowed)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class TransformerLayer(nn.Module):
    def __init__(self, config: Qwen3OmniCode2WavConfig):
        super().__init__()
        self.self_attn = SlidingAttention(config)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(config.hidden_size)
        self.mlp_layer_scale = LayerScale(config.hidden_size)

    def forward(self, x, cos, sin, stream: Code2WavStream | None = None,
                past_frames: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, stream, past_frames))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class PreTransformer(nn.Module):
    def __init__(self, config: Qwen3OmniCode2WavConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(self, x: torch.Tensor, first_positions: list[int],
                stream: Code2WavStream | None = None) -> torch.Tensor:
        """first_positions: each row's first frame (its stream's frames so far)."""
        first = torch.tensor(first_positions, device=x.device)
        positions = first[:, None] + torch.arange(x.shape[1], device=x.device)[None]
        cos, sin = self.rotary_emb(positions, x.dtype)  # [B, T, D]: apply_rotary spreads them over the heads
        for layer in self.layers:
            x = layer(x, cos, sin, stream, first)
        return self.norm(x)


class Qwen3OmniCode2Wav(nn.Module):
    def __init__(self, config: Qwen3OmniCode2WavConfig):
        super().__init__()
        self.config = config
        self.code_embedding = nn.Embedding(config.codebook_size * config.num_quantizers, config.hidden_size)
        self.pre_transformer = PreTransformer(config)
        H = config.hidden_size
        self.upsample = nn.ModuleList(nn.ModuleList([CausalTransConv(H, H, ratio, ratio), ConvNeXtBlock(H)])
                                      for ratio in config.upsampling_ratios)
        dims = [config.decoder_dim // 2**i for i in range(len(config.upsample_rates) + 1)]
        self.decoder = nn.ModuleList([
            CausalConv(H, config.decoder_dim, 7),
            *(DecoderBlock(dims[i], dims[i + 1], rate) for i, rate in enumerate(config.upsample_rates)),
            SnakeBeta(dims[-1]),
            CausalConv(dims[-1], 1, 7),
        ])

    def forward(self, codes: torch.Tensor, stream: Code2WavStream | None = None) -> torch.Tensor:
        """codes [B, Q, T] → wav [B, 1, samples]; in a stream, the samples these codes made final."""
        c = self.config
        if codes.shape[1] != c.num_quantizers:
            raise ValueError(f"expected {c.num_quantizers} codes per frame, got {codes.shape[1]}")
        first = stream.first_positions(codes.shape[0]) if stream is not None else [0] * codes.shape[0]
        if codes.shape[-1]:
            offsets = torch.arange(c.num_quantizers, device=codes.device)[:, None] * c.codebook_size
            x = self.code_embedding(codes + offsets).mean(1)  # [B, T, H]
            x = self.pre_transformer(x, first, stream).transpose(1, 2)  # [B, H, T]
        else:
            x = self.code_embedding.weight.new_zeros(codes.shape[0], c.hidden_size, 0)
        if stream is not None:
            stream.advance(codes.shape[-1])
        for transposed, convnext in self.upsample:
            x = convnext(transposed(x, stream), stream)
        for layer in self.decoder:
            x = layer(x, stream) if isinstance(layer, (CausalConv, DecoderBlock)) else layer(x)
        return x.clamp(-1.0, 1.0)


def load_qwen3_omni_code2wav(directory: str | Path, dtype: torch.dtype | str | None = torch.float32,
                             device: str = "cpu") -> Qwen3OmniCode2Wav:
    """Code2Wav of a Qwen3-Omni checkpoint, in eval mode; every `code2wav.` key consumed.
    float32 by default: a vocoder's small convs gain little from bf16 and lose precision."""
    config = Qwen3OmniCode2WavConfig.from_dict(read_config(directory))
    model = empty_model(Qwen3OmniCode2Wav, config, resolve_dtype(dtype), device)
    load_state_dict_strict(model, load_prefixed_tensors(directory, CODE2WAV_PREFIX), assign=True)
    return model.to(device)


__all__ = ["SAMPLE_RATE", "Code2WavStream", "JoinedCode2WavStreams", "Qwen3OmniCode2Wav", "Qwen3OmniCode2WavConfig",
           "decode_joined", "load_qwen3_omni_code2wav"]
