"""Our Qwen3-VL and Qwen3-VL-MoE against transformers' (tiny random checkpoints, float32)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from omnilive.model.qwen3_vl import Qwen3VLConfig, load_qwen3_vl
from omnilive.model.weights import WeightsMismatchError
from tests.model.qwen3_vl_tiny import PATCH, build_tiny_qwen3_vl
from tests.model.parity import (
    TOLERANCE,
    assert_chunked_and_batched_prefill_equal_whole,
    assert_greedy_equals_generate,
    assert_logits_equal_reference,
    prefill,
    reference_logits,
    resaved,
)
from tests.model.test_qwen2_5_vl import Prompt
from tests.model.vl_tiny import VIDEO, VISION_BOS, VISION_EOS

transformers = pytest.importorskip("transformers")


class Qwen3Prompt(Prompt):
    """Qwen3-VL's layout: a video is one "<t seconds>" text + <|vision_start|> frame group
    <|vision_end|> per temporal patch."""

    patch_dim = 3 * 2 * PATCH * PATCH

    def video(self, t: int, h: int, w: int, seconds: float = 1.0) -> Qwen3Prompt:
        self.videos.append((t, h, w))
        self.seconds.append(seconds)
        for _ in range(t):
            self.text(3)  # the timestamp's tokens
            self.ids += [VISION_BOS] + [VIDEO] * (h * w // 4) + [VISION_EOS]
        return self

    def media(self, seed: int = 0):
        media, reference = super().media(seed)
        reference.pop("second_per_grid_ts", None)  # Qwen3-VL writes time as text
        return media, reference


PROMPTS = {
    "text": lambda: Qwen3Prompt().text(12),
    "image": lambda: Qwen3Prompt().text(3).image(8, 12).text(4),
    "two_images": lambda: Qwen3Prompt().text(2).image(4, 6).text(3).image(6, 4).text(2),
    "video": lambda: Qwen3Prompt().text(2).video(3, 4, 8).text(3),
    "image_and_video": lambda: Qwen3Prompt().text(2).image(6, 4).text(1).video(2, 4, 4).text(2),
}


@pytest.fixture(scope="module", params=["dense", "moe"])
def tiny(request, tmp_path_factory):
    built = build_tiny_qwen3_vl(tmp_path_factory.mktemp(f"qwen3_vl_{request.param}"), seed=6,  # a varied greedy reply for both
                                moe=request.param == "moe", with_tokenizer=False)
    return built.directory, built.model


@pytest.fixture(scope="module")
def ours(tiny):
    return load_qwen3_vl(tiny[0], dtype=torch.float32)


@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_logits_match_transformers(tiny, ours, case):
    prompt = PROMPTS[case]()
    prepared, expected = assert_logits_equal_reference(tiny[1], ours, prompt.ids, *prompt.media())
    if case != "text":  # DeepStack is live: without it the logits differ
        bare = type(prepared)(prepared.input_ids, prepared.embeds, prepared.rope)
        assert (prefill(ours, bare)[0] - expected).abs().max().item() > 1e-3


@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_greedy_tokens_match_transformers_generate(tiny, ours, case):
    prompt = PROMPTS[case]()
    assert_greedy_equals_generate(tiny[1], ours, prompt.ids, *prompt.media(seed=7))


def test_chunked_and_batched_prefill_equal_one_whole_prefill(ours):
    """Chunks cut through the media (DeepStack rows sliced with them) and a batch of two
    prompts of different lengths give each prompt's own whole-prefill hidden states."""
    first = Qwen3Prompt().text(3).image(8, 8).text(2).video(2, 4, 4).text(2)
    second = Qwen3Prompt().text(2).image(4, 6).text(5)
    prepared = [ours.prepare_prompt(p.ids, p.media(seed=i)[0]) for i, p in enumerate((first, second))]
    assert_chunked_and_batched_prefill_equal_whole(ours, *prepared, cut=9)  # inside the first prompt's image


def test_video_frames_are_laid_out_like_images(ours):
    prompt = Qwen3Prompt().text(2).video(3, 4, 4).text(2)
    positions = ours.prepare_prompt(prompt.ids, prompt.media()[0]).rope.positions
    video = torch.tensor(prompt.ids) == VIDEO
    # 2 text, then per frame: 3 timestamp tokens, <|vision_start|>, 2 x 2 units (ids start + 0..1),
    # <|vision_end|>: each frame group starts 7 ids after the previous one
    groups = positions[0, video].view(3, 4)
    assert (groups == groups[:, :1]).all() and groups[:, 0].tolist() == [6, 13, 20]


def test_missing_extra_and_misshaped_keys_are_named(tiny, tmp_path):
    def edit(tensors):
        del tensors["model.visual.deepstack_merger_list.1.norm.weight"]
        tensors["model.visual.pos_embed.weight"] = torch.zeros(9, 32)
        tensors["model.visual.extra.weight"] = torch.zeros(1)

    with pytest.raises(WeightsMismatchError) as error:
        load_qwen3_vl(resaved(tiny[0], tmp_path, edit), dtype=torch.float32)
    message = str(error.value)
    assert "missing keys: visual.deepstack_merger_list.1.norm.weight" in message
    assert "visual.pos_embed.weight: checkpoint (9, 32) vs model (16, 32)" in message
    assert "unexpected keys: visual.extra.weight" in message


@pytest.mark.parametrize("tiny", ["moe"], indirect=True)
def test_released_checkpoints_transposed_experts_load_the_same(tiny, ours, tmp_path):
    tensors = load_file(tiny[0] / "model.safetensors")
    fused = [key for key in tensors if key.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(fused) == 4  # layers 0 and 2 are sparse (layer 1 is in mlp_only_layers)

    def transpose(tensors):
        for key in fused:
            tensors[key] = tensors[key].transpose(1, 2).contiguous()

    released = load_qwen3_vl(resaved(tiny[0], tmp_path, transpose), dtype=torch.float32)
    prompt = PROMPTS["image"]()
    media, _ = prompt.media()
    got = prefill(released, released.prepare_prompt(prompt.ids, media))[0]
    assert torch.equal(got, prefill(ours, ours.prepare_prompt(prompt.ids, media))[0])


def test_config_reads_released_rope_scaling():
    raw = {"model_type": "qwen3_vl_moe", "tie_word_embeddings": False,
           "text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                           "vocab_size": 160, "rope_theta": 5e6, "num_experts": 4, "num_experts_per_tok": 2,
                           "moe_intermediate_size": 48, "tie_word_embeddings": True,
                           "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                            "mrope_interleaved": True}},
           "vision_config": {"hidden_size": 32, "num_heads": 2, "out_hidden_size": 64,
                             "deepstack_visual_indexes": [0, 1]}}
    config = Qwen3VLConfig.from_dict(raw)
    text = config.text_config
    assert text.mrope_section == (2, 3, 3) and text.mrope_interleaved and text.qk_norm
    assert text.rope_theta == 5e6 and not text.tie_word_embeddings and text.num_experts == 4
    assert config.deepstack_layers == 2 and config.vision_config.grid_side == 48


def test_a_tied_output_head_loads_from_the_embedding(tmp_path):
    """Qwen3-VL-4B ties lm_head to the embedding: its checkpoint has no lm_head.weight."""
    from transformers import Qwen3VLForConditionalGeneration

    from tests.model.omni_tiny import randomize
    from tests.model.qwen3_vl_tiny import tiny_qwen3_vl_config

    config = tiny_qwen3_vl_config()
    config.tie_word_embeddings = True
    model = Qwen3VLForConditionalGeneration(config).float().eval()
    randomize(model, 0)
    model.tie_weights()
    model.save_pretrained(tmp_path)
    assert not any(key.startswith("lm_head") for key in load_file(tmp_path / "model.safetensors"))
    ours = load_qwen3_vl(tmp_path, dtype=torch.float32)
    prompt = PROMPTS["image"]()
    media, reference = prompt.media()
    got = prefill(ours, ours.prepare_prompt(prompt.ids, media))[0]
    assert (got - reference_logits(model, prompt.ids, reference)).abs().max().item() <= TOLERANCE


def test_packed_fused_experts_equal_the_plain_ones():
    from omnilive.model.moe import FusedExperts
    from omnilive.model.packed import can_pack

    if not can_pack(torch.float32, "cpu"):
        pytest.skip("this torch has no oneDNN")
    experts = FusedExperts(64, 48, 3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (experts.gate_up_proj, experts.down_proj):
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)
    rows = torch.randn(5, 64, generator=generator)
    with torch.no_grad():
        plain = [experts(index, rows) for index in range(3)]
        assert experts.pack() == 6 and experts.pack() == 0  # packed once
        for index in range(3):
            assert (experts(index, rows) - plain[index]).abs().max().item() <= 1e-5
