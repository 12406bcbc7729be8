"""Our Qwen2.5-Omni vision and audio encoders against transformers' (tiny random models, float32)."""

from __future__ import annotations

import pytest
import torch

from omnilive.model.audio import AudioEncoder, audio_output_tokens, pack_padded_mel
from omnilive.model.omni_config import AudioEncoderConfig, VisionEncoderConfig, encoder_configs
from omnilive.model.vision import VisionEncoder, VisionLayout, segment_attention
from omnilive.model.weights import WeightsMismatchError, load_state_dict_strict

omni = pytest.importorskip("transformers.models.qwen2_5_omni.modeling_qwen2_5_omni")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4

TINY_VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=48,
    num_heads=2,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=56,  # 2 x 2 merge units per window
    out_hidden_size=40,
    fullatt_block_indexes=[1],  # blocks 0 and 2 windowed, block 1 full
    initializer_range=0.1,  # large enough that attention patterns (window vs full) matter
)

TINY_AUDIO = dict(
    num_mel_bins=128,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    d_model=32,
    n_window=8,  # chunks of 16 mel frames
    max_source_positions=64,
    output_dim=24,
    initializer_range=0.1,
)


def randomize_norms_and_biases(module: torch.nn.Module) -> None:
    """Default init leaves biases at 0 and norms at 1, which would hide mix-ups."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))


@pytest.fixture(scope="module")
def vision_pair():
    torch.manual_seed(0)
    reference = omni.Qwen2_5OmniVisionEncoder(transformers.Qwen2_5OmniVisionEncoderConfig(**TINY_VISION)).eval()
    randomize_norms_and_biases(reference)
    ours = VisionEncoder(VisionEncoderConfig.from_dict(reference.config.to_dict())).eval()
    load_state_dict_strict(ours, reference.state_dict())
    return reference, ours


@pytest.fixture(scope="module")
def audio_pair():
    torch.manual_seed(0)
    reference = omni.Qwen2_5OmniAudioEncoder(transformers.Qwen2_5OmniAudioEncoderConfig(**TINY_AUDIO)).eval()
    randomize_norms_and_biases(reference)
    ours = AudioEncoder(AudioEncoderConfig.from_dict(reference.config.to_dict())).eval()
    load_state_dict_strict(ours, reference.state_dict())
    return reference, ours


@pytest.mark.parametrize(
    "grids",
    [
        [(1, 8, 12)],  # one image: 4 x 6 merge units, whole windows
        [(1, 8, 12), (1, 6, 10)],  # two sizes; the second has partial windows
        [(3, 4, 6), (1, 2, 2)],  # a 6-frame video (t = 3) and a single-unit image
    ],
)
def test_vision_matches_transformers(vision_pair, grids):
    reference, ours = vision_pair
    grid_thw = torch.tensor(grids)
    patches = int(grid_thw.prod(-1).sum())
    pixel_values = torch.randn(patches, ours.config.patch_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(hidden_states=pixel_values, grid_thw=grid_thw).pooler_output
        got = ours(pixel_values, grid_thw)
    assert got.shape == (patches // 4, TINY_VISION["out_hidden_size"])
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_vision_layout_matches_reference_window_index():
    from transformers.vision_utils import get_vision_window_index

    config = VisionEncoderConfig.from_dict(TINY_VISION)
    grid_thw = torch.tensor([(2, 10, 14), (1, 4, 4)])
    layout = VisionLayout.build(grid_thw, config)
    window_index, cu_window_seqlens = get_vision_window_index(grid_thw, 2, config.window_size, config.patch_size)
    assert torch.equal(layout.unit_order, window_index)
    assert torch.equal(layout.window_bounds, cu_window_seqlens.long())
    assert layout.frame_bounds.tolist() == [0, 140, 280, 296]


def test_vision_rejects_pixels_that_do_not_match_the_grid(vision_pair):
    _, ours = vision_pair
    with pytest.raises(ValueError, match="do not match grid_thw"):
        ours(torch.zeros(95, ours.config.patch_dim), torch.tensor([(1, 8, 12)]))


@pytest.mark.parametrize("lengths", [(70, 37), (32,), (5, 16, 17)])
def test_audio_matches_transformers(audio_pair, lengths):
    reference, ours = audio_pair
    batch, longest = len(lengths), max(lengths)
    features = torch.randn(batch, 128, longest, generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).long()  # [B, F_max]
    mel, frames = pack_padded_mel(features, mask)
    with torch.no_grad():
        expected = reference(input_features=mel, feature_lens=frames).last_hidden_state
        got = ours(mel, frames)
    assert got.shape == (int(audio_output_tokens(frames).sum()), TINY_AUDIO["output_dim"])
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_audio_each_audio_is_independent(audio_pair):
    """Packing two audios gives each the output it gets alone (no attention across audios)."""
    _, ours = audio_pair
    first, second = torch.randn(128, 50), torch.randn(128, 23)
    with torch.no_grad():
        together = ours(torch.cat([first, second], dim=1), torch.tensor([50, 23]))
        alone = torch.cat([ours(first, torch.tensor([50])), ours(second, torch.tensor([23]))])
    assert (together - alone).abs().max().item() <= 1e-5


def test_segment_attention_equals_block_diagonal_mask():
    q, k, v = (torch.randn(2, 11, 8) for _ in range(3))
    bounds = torch.tensor([0, 4, 8, 9, 11])
    segment = torch.repeat_interleave(torch.arange(4), bounds.diff())
    mask = segment[:, None] == segment[None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (segment_attention(q, k, v, bounds) - expected).abs().max().item() <= 1e-6


def test_configs_from_checkpoint_json_ignore_unknown_keys():
    raw = {
        "thinker_config": {
            "vision_config": {**TINY_VISION, "model_type": "qwen2_5_omni_vision_encoder", "tokens_per_second": 25,
                              "rope_parameters": {"rope_type": "axial", "rope_theta": 5000.0}},
            "audio_config": {**TINY_AUDIO, "scale_embedding": False, "dropout": 0.0},
        }
    }
    vision, audio = encoder_configs(raw)
    assert vision.fullatt_block_indexes == (1,) and vision.rope_theta == 5000.0 and vision.window_units == 2
    assert audio.n_window == 8 and audio.output_dim == 24


def test_strict_load_refuses_a_missing_key(vision_pair):
    reference, _ = vision_pair
    state = dict(reference.state_dict())
    state.pop("blocks.0.attn.q.weight")
    with pytest.raises(WeightsMismatchError, match="blocks.0.attn.q.weight"):
        load_state_dict_strict(VisionEncoder(VisionEncoderConfig.from_dict(TINY_VISION)), state)
