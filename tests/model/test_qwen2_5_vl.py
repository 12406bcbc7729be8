"""Our Qwen2.5-VL against transformers' (tiny random checkpoint, float32)."""

from __future__ import annotations

import pytest
import torch

from omnilive.model.qwen2_5_vl import VLConfig, load_qwen2_5_vl
from omnilive.model.thinker import ThinkerMedia
from omnilive.model.weights import WeightsMismatchError
from tests.model.parity import assert_greedy_equals_generate, assert_logits_equal_reference, random_media, resaved
from tests.model.vl_tiny import IMAGE, VIDEO, VISION_BOS, VISION_EOS, build_tiny_vl

transformers = pytest.importorskip("transformers")

PATCH_DIM = 3 * 2 * 14 * 14


class Prompt:
    """Token ids plus the media metadata both implementations need."""

    patch_dim = PATCH_DIM

    def __init__(self):
        self.ids: list[int] = []
        self.images, self.videos, self.seconds = [], [], []

    def text(self, n: int) -> Prompt:
        seed = len(self.ids) + 1
        self.ids += torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
        return self

    def image(self, h: int, w: int) -> Prompt:
        self.images.append((1, h, w))
        self.ids += [VISION_BOS] + [IMAGE] * (h * w // 4) + [VISION_EOS]
        return self

    def video(self, t: int, h: int, w: int, seconds: float) -> Prompt:
        self.videos.append((t, h, w))
        self.seconds.append(seconds)
        self.ids += [VISION_BOS] + [VIDEO] * (t * h * w // 4) + [VISION_EOS]
        return self

    def media(self, seed: int = 0) -> tuple[ThinkerMedia, dict]:
        """Random patches fitting the prompt, in our format and as transformers' kwargs."""
        media, reference = random_media(self.patch_dim, self.images, self.videos, self.seconds, seed=seed,
                                        seconds_key="second_per_grid_ts")
        ids = torch.tensor(self.ids)
        # transformers reads media positions off these types: text 0, image 1, video 2
        reference["mm_token_type_ids"] = ((ids == IMAGE).long() + 2 * (ids == VIDEO).long())[None]
        return media, reference


PROMPTS = {
    "text": lambda: Prompt().text(12),
    "image": lambda: Prompt().text(3).image(8, 12).text(4),
    "two_images": lambda: Prompt().text(2).image(4, 6).text(3).image(6, 4).text(2),
    # temporal step 2 x 0.75 = 1.5 ids, truncated: 0, 1, 3 (within the 2 x 4 units' spatial ids)
    "video": lambda: Prompt().text(2).video(3, 4, 8, seconds=0.75).text(3),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A transformers Qwen2_5_VLForConditionalGeneration with random weights, saved to disk."""
    built = build_tiny_vl(tmp_path_factory.mktemp("qwen2_5_vl"), seed=5, with_tokenizer=False)
    return built.directory, built.model


@pytest.fixture(scope="module")
def ours(tiny):
    return load_qwen2_5_vl(tiny[0], dtype=torch.float32)


@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_logits_match_transformers(tiny, ours, case):
    prompt = PROMPTS[case]()
    assert_logits_equal_reference(tiny[1], ours, prompt.ids, *prompt.media())


def test_greedy_tokens_match_transformers_generate(tiny, ours):
    prompt = Prompt().text(3).image(8, 8).text(2)
    assert_greedy_equals_generate(tiny[1], ours, prompt.ids, *prompt.media(seed=3), distinct_more_than=3)


def test_text_after_a_long_video_starts_past_its_temporal_ids(ours):
    # step 2 x 2.0 = 4 ids per temporal patch: the video's ids reach start + 8, past its 2 x 2 units
    prompt = Prompt().text(2).video(3, 4, 4, seconds=2.0).text(2)
    positions = ours.prepare_prompt(prompt.ids, prompt.media()[0]).rope.positions
    video = torch.tensor(prompt.ids) == VIDEO
    assert positions[0, video].unique().tolist() == [3, 7, 11]
    after = int(video.nonzero().max()) + 1  # <|vision_end|>
    assert positions[:, after].tolist() == [12, 12, 12]


def test_placeholder_count_must_match_media(ours):
    prompt = Prompt().text(2).image(4, 4).text(2)
    media, _ = prompt.media()
    one_short = list(prompt.ids)
    one_short.remove(IMAGE)
    with pytest.raises(ValueError, match="3 placeholder tokens"):
        ours.prepare_prompt(one_short, media)


def test_misshaped_fused_qkv_is_a_clear_error(tiny, tmp_path):
    def shrink(tensors):
        tensors["visual.blocks.0.attn.qkv.weight"] = tensors["visual.blocks.0.attn.qkv.weight"][:-2]

    with pytest.raises(WeightsMismatchError, match=r"visual\.blocks\.0\.attn\.qkv\.weight.*\(94, 32\) vs model \(96, 32\)"):
        load_qwen2_5_vl(resaved(tiny[0], tmp_path, shrink), dtype=torch.float32)


def test_misshaped_missing_and_extra_keys_are_named(tiny, tmp_path):
    def edit(tensors):
        tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(97, 64)
        del tensors["visual.merger.ln_q.weight"]
        tensors["visual.extra.weight"] = torch.zeros(1)

    with pytest.raises(WeightsMismatchError) as error:
        load_qwen2_5_vl(resaved(tiny[0], tmp_path, edit), dtype=torch.float32)
    message = str(error.value)
    assert "model.layers.1.mlp.up_proj.weight: checkpoint (97, 64) vs model (96, 64)" in message
    assert "missing keys: visual.merger.ln_q.weight" in message
    assert "unexpected keys: visual.extra.weight" in message


def test_config_reads_older_flat_checkpoints():
    flat = {
        "model_type": "qwen2_5_vl", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 160, "rope_theta": 1e6, "tie_word_embeddings": True,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {"hidden_size": 32, "num_heads": 2, "out_hidden_size": 64, "tokens_per_second": 2},
        "image_token_id": 7,
    }
    config = VLConfig.from_dict(flat)
    assert config.text_config.mrope_section == (2, 3, 3)
    assert config.text_config.rope_theta == 1e6 and config.text_config.tie_word_embeddings
    assert config.tokens_per_second == 2 and config.image_token_id == 7
    assert config.vision_config.out_hidden_size == 64
