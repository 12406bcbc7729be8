"""Qwen2.5-Omni token2wav: talker codec tokens + a voice → 24 kHz waveform.

  codes [B, N] ──DiT flow matching (RK4, classifier-free guidance)──▶ mel [B, 80, 2N]
  mel ──BigVGAN──▶ waveform [B, 2N·240]

The ODE starts from explicit Gaussian noise (`initial_noise`, or drawn with `torch.randn`
exactly as the reference draws it), so runs are reproducible and comparable.
Parameter names equal the checkpoint keys under `token2wav.`; `load_token2wav` reads a
Qwen2.5-Omni checkpoint folder (config.json, safetensors shards, spk_dict.pt).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from omnilive.model.bigvgan import BigVGAN
from omnilive.model.dit import DiT
from omnilive.model.packed import pack_linears
from omnilive.model.token2wav_config import Token2WavConfig
from omnilive.model.weights import load_state_dict_strict


@dataclass(frozen=True)
class Voice:
    """One entry of spk_dict.pt: what token2wav (and the talker) need for a speaker."""

    speaker_embedding: torch.Tensor  # [1, enc_emb_dim] x-vector ("cond")
    reference_mel: torch.Tensor  # [1, T_ref, mel_dim] log-mel of a reference utterance ("ref_mel")
    bos_token: int | None = None  # the talker's text-BOS token for this voice

    @classmethod
    def from_spk_dict_entry(cls, entry: Mapping[str, object]) -> Voice:
        bos = entry.get("bos_token")
        reference_mel = torch.as_tensor(entry["ref_mel"]).float()
        return cls(
            speaker_embedding=torch.as_tensor(entry["cond"]).float().reshape(1, -1),
            reference_mel=reference_mel.reshape(1, -1, reference_mel.shape[-1]),
            bos_token=int(bos) if bos is not None else None,
        )

    def to(self, device: torch.device | str) -> Voice:
        return replace(self, speaker_embedding=self.speaker_embedding.to(device),
                       reference_mel=self.reference_mel.to(device))


def load_voices(spk_dict_path: str | Path) -> dict[str, Voice]:
    """spk_dict.pt ({"Chelsie": {"cond", "ref_mel", "bos_token"}, "Ethan": ...}) → voices by name."""
    entries = torch.load(spk_dict_path, map_location="cpu", weights_only=True)
    return {name: Voice.from_spk_dict_entry(entry) for name, entry in entries.items()}


def flow_time_grid(num_steps: int, sway_coefficient: float | None, device: torch.device) -> torch.Tensor:
    """num_steps times in [0, 1]; a negative sway puts more of them near t=0 (the noisy end)."""
    times = torch.linspace(0, 1, num_steps, device=device, dtype=torch.float32)
    if sway_coefficient is not None:
        times = times + sway_coefficient * (torch.cos(torch.pi / 2 * times) - 1 + times)
    return times


def rk4_integrate(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                  times: torch.Tensor) -> torch.Tensor:
    """Integrate dx/dt = velocity(t, x) over `times` with the RK4 3/8-rule; returns x(times[-1])."""
    third = 1 / 3
    for t0, t1 in zip(times[:-1], times[1:]):
        dt = t1 - t0
        k1 = velocity(t0, x)
        k2 = velocity(t0 + dt * third, x + dt * k1 * third)
        k3 = velocity(t0 + dt * (2 / 3), x + dt * (k2 - k1 * third))
        k4 = velocity(t1, x + dt * (k1 - k2 + k3))
        x = x + (k1 + 3 * (k2 + k3) + k4) * dt / 8
    return x


class Token2Wav(nn.Module):
    def __init__(self, config: Token2WavConfig):
        super().__init__()
        self.config = config
        self.code2wav_dit_model = DiT(config.dit_config)
        self.code2wav_bigvgan_model = BigVGAN(config.bigvgan_config)

    @torch.no_grad()
    def dit_mel(self, codes: torch.Tensor, voice: Voice, num_steps: int = 10, guidance_scale: float = 0.5,
                sway_coefficient: float | None = -1.0, initial_noise: torch.Tensor | None = None) -> torch.Tensor:
        """codes [B, N] → log-mel [B, mel_dim, N·repeats].

        initial_noise [B, N·repeats, mel_dim]; None draws it with torch.randn (seed torch to
        reproduce the reference, which draws the same tensor the same way)."""
        dit = self.code2wav_dit_model
        batch, frames, mel_dim = codes.shape[0], codes.shape[1] * dit.config.repeats, dit.config.mel_dim
        device = codes.device
        speaker_embedding = voice.speaker_embedding.to(device).float().expand(batch, -1)
        reference_mel = voice.reference_mel.to(device).float().expand(batch, -1, -1)
        if initial_noise is None:
            initial_noise = torch.randn(batch, frames, mel_dim, device=device)
        if initial_noise.shape != (batch, frames, mel_dim):
            raise ValueError(f"initial_noise must be {(batch, frames, mel_dim)}, got {tuple(initial_noise.shape)}")

        guided = guidance_scale >= 1e-5
        conditioning = dit.conditioning(codes, speaker_embedding, reference_mel, with_unconditional=guided)

        def velocity(time: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            if not guided:
                return dit(x, time, conditioning)
            conditional, unconditional = dit(torch.cat([x, x]), time, conditioning).chunk(2)
            return conditional + (conditional - unconditional) * guidance_scale

        times = flow_time_grid(num_steps, sway_coefficient, device)
        mel = rk4_integrate(velocity, initial_noise.to(device=device, dtype=torch.float32), times)
        return mel.transpose(1, 2)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel [B, mel_dim, T] → waveform [B, T·hop] float32 in [-1, 1]."""
        return self.code2wav_bigvgan_model(mel.float())

    @torch.no_grad()
    def synthesize(self, codes: torch.Tensor, voice: Voice, num_steps: int = 10, guidance_scale: float = 0.5,
                   sway_coefficient: float | None = -1.0, initial_noise: torch.Tensor | None = None) -> torch.Tensor:
        """codes [B, N] (talker codec ids, without BOS/EOS) → waveform [B, N·repeats·hop] float32."""
        mel = self.dit_mel(codes, voice, num_steps, guidance_scale, sway_coefficient, initial_noise)
        return self.vocode(mel)

    forward = synthesize

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate


def load_token2wav(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Token2Wav, dict[str, Voice]]:
    """Token2Wav (float32, eval) and its voices from a Qwen2.5-Omni checkpoint folder."""
    model_dir = Path(model_dir)
    config = Token2WavConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards = sorted({file for key, file in weight_map.items() if key.startswith("token2wav.")})
    else:
        shards = ["model.safetensors"]
    prefix = "token2wav."
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(model_dir / shard, framework="pt") as f:
            tensors.update({key[len(prefix):]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)})
    model = Token2Wav(config)
    load_state_dict_strict(model, tensors)  # every token2wav.* key consumed, every shape checked
    voices = load_voices(model_dir / "spk_dict.pt") if (model_dir / "spk_dict.pt").exists() else {}
    return model.float().eval().to(device), voices


def pack_dit(token2wav: Token2Wav, compute_dtype: torch.dtype) -> int:
    """Pack the DiT's linears for oneDNN (model/packed.py) when its solves run in float32 on a
    CPU: a window's 144-288 rows run 1.3-1.6x faster. Under bf16 autocast they stay plain, for
    autocast to cast. Returns how many were packed."""
    if compute_dtype != torch.float32:
        return 0
    return pack_linears(token2wav.code2wav_dit_model)


def seconds_of_audio(num_codes: int, config: Token2WavConfig) -> float:
    """Duration of the waveform that `num_codes` codec tokens become."""
    return num_codes * config.dit_config.repeats * config.bigvgan_config.hop_length / config.sample_rate


__all__ = ["Token2Wav", "Voice", "load_voices", "load_token2wav", "flow_time_grid", "pack_dit", "rk4_integrate",
           "seconds_of_audio"]
