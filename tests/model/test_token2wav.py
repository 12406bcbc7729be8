"""Our token2wav (DiT + RK4 sampler + BigVGAN) against transformers' Qwen2.5-Omni reference,
on tiny random configs built with transformers' own config classes (float32)."""

from __future__ import annotations

import json

import pytest
import torch

from omnilive.model.token2wav import Token2Wav, Voice, load_token2wav, load_voices, pack_dit
from omnilive.model.token2wav_config import Token2WavConfig
from omnilive.model.weights import WeightsMismatchError, load_state_dict_strict

transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as reference  # noqa: E402

TINY_DIT = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, head_dim=16, ff_mult=2, emb_dim=16,
    block_size=4, look_ahead_layers=[1], look_backward_layers=[0, 3], repeats=2, num_embeds=20, mel_dim=8,
    enc_emb_dim=12, enc_dim=8, enc_channels=[8, 8, 8, 8, 24], enc_kernel_sizes=[5, 3, 3, 3, 1],
    enc_dilations=[1, 2, 3, 4, 1], enc_attention_channels=8, enc_res2net_scale=2, enc_se_channels=4,
    max_position_embeddings=256,
)
TINY_BIGVGAN = dict(
    mel_dim=8, upsample_initial_channel=32, resblock_kernel_sizes=[3, 7],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], upsample_rates=[5, 3, 2], upsample_kernel_sizes=[11, 7, 4],
)
NUM_CODES = 11  # 22 mel frames: several attention blocks, the last one partial


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Well-scaled random values everywhere (the reference zero-inits Snake α/β and adaLN),
    so no parameter can be mixed up behind a zero or a one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith((".alpha", ".beta")):  # Snake α/β are logarithms
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            else:
                # gain 0.8: the tiny vocoder's output stays inside its ±1 clamp
                p.copy_(torch.randn(p.shape, generator=generator) * 0.8 / p[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    config = reference.Qwen2_5OmniToken2WavConfig(
        dit_config=reference.Qwen2_5OmniDiTConfig(**TINY_DIT).to_dict(),
        bigvgan_config=reference.Qwen2_5OmniBigVGANConfig(**TINY_BIGVGAN).to_dict(),
    )
    model = reference.Qwen2_5OmniToken2WavModel(config).eval()
    randomize(model, seed=1)
    return model


@pytest.fixture(scope="module")
def ours(reference_model):
    config = Token2WavConfig.from_dict(reference_model.config.to_dict())
    model = Token2Wav(config).eval()
    load_state_dict_strict(model, reference_model.state_dict())
    return model


@pytest.fixture(scope="module")
def voice():
    generator = torch.Generator().manual_seed(2)
    return Voice(speaker_embedding=torch.randn(1, TINY_DIT["enc_emb_dim"], generator=generator),
                 reference_mel=torch.randn(1, 30, TINY_DIT["mel_dim"], generator=generator) - 5.0)


@pytest.fixture(scope="module")
def codes():
    return torch.randint(1, TINY_DIT["num_embeds"], (1, NUM_CODES), generator=torch.Generator().manual_seed(3))


def test_config_reads_checkpoint_names(reference_model):
    config = Token2WavConfig.from_dict({"token2wav_config": reference_model.config.to_dict()})
    assert config.dit_config.num_hidden_layers == 4 and config.dit_config.look_backward_layers == (0, 3)
    assert config.bigvgan_config.hop_length == 30
    legacy = Token2WavConfig.from_dict({"dit_config": {"dim": 96, "depth": 3, "heads": 4, "unknown": 1}})
    assert (legacy.dit_config.hidden_size, legacy.dit_config.num_hidden_layers) == (96, 3)
    assert legacy.dit_config.num_attention_heads == 4


def test_bigvgan_matches_reference(reference_model, ours):
    mel = torch.randn(1, TINY_BIGVGAN["mel_dim"], 17, generator=torch.Generator().manual_seed(4)) * 2 - 6
    with torch.no_grad():
        expected = reference_model.code2wav_bigvgan_model(mel)
    got = ours.vocode(mel)
    assert got.shape == (1, 17 * 30) and got.dtype == torch.float32
    # neither silent nor clipped, so the comparison below means something
    assert got.abs().mean() > 0.05 and (got.abs() > 0.999).float().mean() < 0.05
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-4)


def test_dit_forward_matches_reference(reference_model, ours, voice, codes):
    frames = NUM_CODES * TINY_DIT["repeats"]
    noisy_mel = torch.randn(1, frames, TINY_DIT["mel_dim"], generator=torch.Generator().manual_seed(5))
    time = torch.tensor(0.37)
    with torch.no_grad():
        expected = reference_model.code2wav_dit_model(
            hidden_states=noisy_mel, condition_vector=voice.reference_mel,
            speaker_embedding=voice.speaker_embedding.unsqueeze(1).repeat(1, frames, 1),
            quantized_code=codes, time_step=time, apply_cfg=True,
        )
        dit = ours.code2wav_dit_model
        conditioning = dit.conditioning(codes, voice.speaker_embedding, voice.reference_mel, with_unconditional=True)
        got = dit(torch.cat([noisy_mel, noisy_mel]), time, conditioning)
    assert got.shape == (2, frames, TINY_DIT["mel_dim"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("guidance_scale", [0.5, 0.0])
def test_waveform_matches_reference(reference_model, ours, voice, codes, guidance_scale):
    frames = NUM_CODES * TINY_DIT["repeats"]
    torch.manual_seed(6)  # the reference draws its initial noise with torch.randn in this shape
    noise = torch.randn(1, frames, TINY_DIT["mel_dim"])
    torch.manual_seed(6)
    with torch.no_grad():
        expected = reference_model(codes, voice.speaker_embedding, voice.reference_mel, num_steps=6,
                                   guidance_scale=guidance_scale, sway_coefficient=-1.0)
    waveform = ours.synthesize(codes, voice, num_steps=6, guidance_scale=guidance_scale, initial_noise=noise)
    assert waveform.shape == (1, frames * 30) and waveform.dtype == torch.float32
    torch.testing.assert_close(waveform[0], expected, rtol=0, atol=1e-4)
    # the noise matters: another draw gives another waveform
    other = ours.synthesize(codes, voice, num_steps=6, guidance_scale=guidance_scale, initial_noise=noise.flip(1))
    assert (other - waveform).abs().max() > 1e-3


def test_block_attention_bounds_look_ahead(ours, voice, codes):
    """One layer looks one block ahead: frames more than a block past a frame's own block
    cannot change its velocity."""
    dit = ours.code2wav_dit_model
    block = TINY_DIT["block_size"]
    conditioning = dit.conditioning(codes, voice.speaker_embedding, voice.reference_mel, with_unconditional=False)
    x = torch.randn(1, NUM_CODES * 2, TINY_DIT["mel_dim"], generator=torch.Generator().manual_seed(7))
    changed = x.clone()
    changed[:, 3 * block:] += 1.0  # blocks 3.. differ
    with torch.no_grad():
        a, b = dit(x, torch.tensor(0.5), conditioning), dit(changed, torch.tensor(0.5), conditioning)
    torch.testing.assert_close(a[:, : 2 * block], b[:, : 2 * block], rtol=0, atol=1e-6)  # blocks 0, 1 unaffected
    assert (a[:, 2 * block: 3 * block] - b[:, 2 * block: 3 * block]).abs().max() > 1e-4  # block 2 looks ahead


def test_strict_loading_names_the_offending_key(reference_model):
    config = Token2WavConfig.from_dict(reference_model.config.to_dict())
    state = dict(reference_model.state_dict())
    model = Token2Wav(config)

    missing = {k: v for k, v in state.items() if k != "code2wav_dit_model.proj_out.bias"}
    with pytest.raises(WeightsMismatchError, match=r"missing.*code2wav_dit_model\.proj_out\.bias"):
        load_state_dict_strict(model, missing)
    with pytest.raises(WeightsMismatchError, match=r"unexpected.*code2wav_bigvgan_model\.extra"):
        load_state_dict_strict(model, {**state, "code2wav_bigvgan_model.extra": torch.zeros(1)})
    key = "code2wav_bigvgan_model.ups.1.0.weight"
    with pytest.raises(WeightsMismatchError, match=key.replace(".", r"\.") + r".*\(16, 8, 6\)"):
        load_state_dict_strict(model, {**state, key: torch.zeros(16, 8, 6)})


def test_load_from_checkpoint_folder(tmp_path, reference_model, ours, voice, codes):
    from safetensors.torch import save_file

    tensors = {f"token2wav.{k}": v.contiguous() for k, v in reference_model.state_dict().items()}
    tensors["thinker.unrelated.weight"] = torch.zeros(2)  # other sub-models' keys are not ours
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"token2wav_config": reference_model.config.to_dict()}))
    torch.save({"Chelsie": {"cond": voice.speaker_embedding, "ref_mel": voice.reference_mel, "bos_token": 151870}},
               tmp_path / "spk_dict.pt")

    model, voices = load_token2wav(tmp_path)
    assert voices.keys() == {"Chelsie"} and voices["Chelsie"].bos_token == 151870
    assert load_voices(tmp_path / "spk_dict.pt")["Chelsie"].reference_mel.shape == voice.reference_mel.shape
    noise = torch.randn(1, NUM_CODES * 2, TINY_DIT["mel_dim"], generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(model.synthesize(codes, voices["Chelsie"], num_steps=3, initial_noise=noise),
                               ours.synthesize(codes, voice, num_steps=3, initial_noise=noise), rtol=0, atol=0)


def test_compute_dtype_is_bfloat16_only_where_its_matmuls_are_fast(monkeypatch):
    from omnilive.model import weights

    cases = ((frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}), torch.bfloat16),
             (frozenset({"avx512f", "avx512_bf16"}), torch.float32), (frozenset({"avx2"}), torch.float32))
    for flags, expected in cases:
        monkeypatch.setattr(weights, "_cpu_flags", lambda flags=flags: flags)
        weights.pick_compute_dtype.cache_clear()
        assert weights.pick_compute_dtype("cpu") == expected
    weights.pick_compute_dtype.cache_clear()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_a_float32_dit_packed_for_onednn_gives_the_same_mel(ours, voice, codes):
    """pack_dit (what the served engine does for float32 speech on a CPU) changes only the
    summation order of the DiT's linears; under bf16 autocast it packs nothing."""
    import copy

    noise = torch.randn(1, codes.shape[1] * 2, 8, generator=torch.Generator().manual_seed(5))
    packed = copy.deepcopy(ours)
    assert pack_dit(packed, torch.bfloat16) == 0
    assert pack_dit(packed, torch.float32) > 0
    plain_mel = ours.dit_mel(codes, voice, num_steps=4, initial_noise=noise)
    packed_mel = packed.dit_mel(codes, voice, num_steps=4, initial_noise=noise)
    torch.testing.assert_close(packed_mel, plain_mel, atol=1e-4, rtol=1e-4)
