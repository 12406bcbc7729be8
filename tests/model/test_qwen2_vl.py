"""Our Qwen2-VL (QVQ's architecture) against transformers' (tiny random checkpoint, float32)."""

from __future__ import annotations

import pytest
import torch

from omnilive.model.qwen2_vl import Qwen2VLConfig, load_qwen2_vl
from omnilive.model.weights import WeightsMismatchError
from tests.model.parity import assert_greedy_equals_generate, assert_logits_equal_reference, resaved
from tests.model.test_qwen2_5_vl import PROMPTS, Prompt
from tests.model.vl_tiny import VIDEO, build_tiny_vl

transformers = pytest.importorskip("transformers")


def reference_media(prompt: Prompt, seed: int = 0):
    media, reference = prompt.media(seed)
    reference.pop("second_per_grid_ts", None)  # Qwen2-VL has no video time scale
    return media, reference


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = build_tiny_vl(tmp_path_factory.mktemp("qwen2_vl"), seed=7, with_tokenizer=False, family="qwen2_vl")
    return built.directory, built.model


@pytest.fixture(scope="module")
def ours(tiny):
    return load_qwen2_vl(tiny[0], dtype=torch.float32)


@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_logits_match_transformers(tiny, ours, case):
    prompt = PROMPTS[case]()
    assert_logits_equal_reference(tiny[1], ours, prompt.ids, *reference_media(prompt))


def test_video_time_advances_one_id_per_temporal_patch(ours):
    prompt = Prompt().text(2).video(3, 4, 4, seconds=2.0).text(2)  # seconds are ignored by Qwen2-VL
    positions = ours.prepare_prompt(prompt.ids, prompt.media()[0]).rope.positions
    video = torch.tensor(prompt.ids) == VIDEO
    assert positions[0, video].unique().tolist() == [3, 4, 5]  # start 3 (2 text + vision_start), then +1


def test_greedy_tokens_match_transformers_generate(tiny, ours):
    prompt = Prompt().text(3).image(8, 8).text(2).video(2, 4, 4, seconds=1.0).text(2)
    assert_greedy_equals_generate(tiny[1], ours, prompt.ids, *reference_media(prompt, seed=4),
                                  distinct_more_than=3)


def test_config_reads_released_checkpoints_flat_layout():
    flat = {"model_type": "qwen2_vl", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 160,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "rope_theta": 1e6,
            "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "in_chans": 3, "mlp_ratio": 2,
                              "num_heads": 2, "hidden_act": "quick_gelu"}}
    config = Qwen2VLConfig.from_dict(flat)
    assert config.text_config.mrope_section == (2, 3, 3) and config.vision_config.in_channels == 3
    assert config.vision_config.embed_dim == 32 and config.vision_config.hidden_size == 64


def test_a_missing_vision_key_is_named(tiny, tmp_path):
    def drop(tensors):
        del tensors[next(key for key in tensors if key.endswith("blocks.0.mlp.fc1.weight"))]

    with pytest.raises(WeightsMismatchError, match="blocks.0.mlp.fc1.weight"):
        load_qwen2_vl(resaved(tiny[0], tmp_path, drop), dtype=torch.float32)
