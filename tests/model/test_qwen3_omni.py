"""Our Qwen3-Omni thinker against transformers' (tiny random checkpoint, float32): the AuT audio
encoder, TM-RoPE positions, logits and greedy tokens for text, image, audio, video and
video-with-audio prompts, and loading (every `thinker.` key consumed)."""

from __future__ import annotations

import pytest
import torch

from omnilive.model.omni_checkpoint import load_prefixed_tensors, read_config
from omnilive.model.qwen3_omni import Qwen3OmniThinkerConfig, load_qwen3_omni_thinker
from omnilive.model.qwen3_omni_audio import aut_output_tokens
from omnilive.model.qwen3_omni_rope import qwen3_omni_positions, video_with_audio_placeholders
from omnilive.model.thinker import ThinkerMedia
from tests.model.parity import (
    TOLERANCE,
    assert_chunked_and_batched_prefill_equal_whole,
    assert_edited_thinker_is_a_clear_error,
    assert_greedy_equals_generate,
    assert_logits_equal_reference,
    random_media,
)
from tests.model.qwen3_omni_tiny import IDS, PATCH, build_tiny_qwen3_omni

pytest.importorskip("transformers")

PATCH_DIM = 3 * 2 * PATCH * PATCH
IMAGE, VIDEO, AUDIO = IDS["image_token_id"], IDS["video_token_id"], IDS["audio_token_id"]
VISION_BOS, VISION_EOS = IDS["vision_start_token_id"], IDS["vision_end_token_id"]
AUDIO_BOS, AUDIO_EOS = IDS["audio_start_token_id"], IDS["audio_end_token_id"]


class Prompt:
    """Token ids laid out as Qwen3-Omni's processor lays them, plus the media both models need."""

    def __init__(self, layout=None):
        self.ids: list[int] = []
        self.images, self.videos, self.seconds, self.audio_frames = [], [], [], []
        self.audio_in_video = False
        self.layout = layout
        self._seed = 0

    def text(self, n: int) -> Prompt:
        self._seed += 1
        self.ids += torch.randint(0, 130, (n,), generator=torch.Generator().manual_seed(self._seed)).tolist()
        return self

    def image(self, h: int, w: int) -> Prompt:
        self.images.append((1, h, w))
        self.ids += [VISION_BOS] + [IMAGE] * (h * w // 4) + [VISION_EOS]
        return self

    def audio(self, frames: int) -> Prompt:
        self.audio_frames.append(frames)
        self.ids += [AUDIO_BOS] + [AUDIO] * int(aut_output_tokens(frames)) + [AUDIO_EOS]
        return self

    def video(self, t: int, h: int, w: int, seconds: float = 1.0) -> Prompt:
        self.videos.append((t, h, w))
        self.seconds.append(seconds)
        self.ids += [VISION_BOS] + [VIDEO] * (t * h * w // 4) + [VISION_EOS]
        return self

    def video_with_audio(self, t: int, h: int, w: int, frames: int, layout, seconds: float = 1.0) -> Prompt:
        self.videos.append((t, h, w))
        self.seconds.append(seconds)
        self.audio_frames.append(frames)
        self.audio_in_video = True
        merged = video_with_audio_placeholders((t, h, w), seconds, int(aut_output_tokens(frames)), layout)
        self.ids += [VISION_BOS, AUDIO_BOS] + merged + [AUDIO_EOS, VISION_EOS]
        return self

    def media(self, seed: int = 0) -> tuple[ThinkerMedia, dict]:
        media, reference = random_media(PATCH_DIM, self.images, self.videos, self.seconds, self.audio_frames,
                                        seed=seed, seconds_key="video_second_per_grid")
        return media, {"use_audio_in_video": self.audio_in_video, **reference}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3_omni"), seed=6)


@pytest.fixture(scope="module")
def ours(tiny):
    return load_qwen3_omni_thinker(tiny.directory, dtype=torch.float32)


def prompts(layout) -> dict[str, Prompt]:
    return {
        "text": Prompt().text(12),
        "image": Prompt().text(3).image(8, 12).text(4),
        "audio": Prompt().text(2).audio(250).text(3),
        "video": Prompt().text(2).video(3, 4, 8).text(3),
        "video_with_audio": Prompt().text(3).video_with_audio(3, 4, 4, 300, layout).text(3),
        "everything": Prompt().text(2).image(4, 6).text(1).audio(130).text(2).video_with_audio(
            2, 4, 4, 180, layout, seconds=2.0).text(2),
    }


CASES = ["text", "image", "audio", "video", "video_with_audio", "everything"]


def test_audio_encoder_matches_transformers(tiny, ours):
    reference = tiny.thinker.model.audio_tower
    for frames in ([250], [37], [100], [250, 120, 430]):  # windows of 2 chunks, a remainder, several audios
        generator = torch.Generator().manual_seed(len(frames))
        mel = torch.randn(128, sum(frames), generator=generator)
        with torch.no_grad():
            expected = reference(mel, feature_lens=torch.tensor(frames)).last_hidden_state
            got = ours.audio_tower(mel, torch.tensor(frames))
        assert got.shape == (sum(int(aut_output_tokens(f)) for f in frames), 64)
        assert (got - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_positions_match_transformers_get_rope_index(tiny, ours, case):
    layout = ours.thinker_config.mrope_layout
    prompt = prompts(layout)[case]
    _, reference = prompt.media()
    ids = torch.tensor([prompt.ids])
    lengths = reference["feature_attention_mask"].sum(-1) if "feature_attention_mask" in reference else None
    expected, delta = tiny.thinker.model.get_rope_index(
        ids, reference.get("image_grid_thw"), reference.get("video_grid_thw"), torch.ones_like(ids),
        prompt.audio_in_video, lengths, reference.get("video_second_per_grid"))
    got = qwen3_omni_positions(prompt.ids, layout, reference.get("image_grid_thw"), reference.get("video_grid_thw"),
                               prompt.seconds)
    assert torch.equal(got.positions, expected[:, 0].long())
    assert got.delta == int(delta)


def test_video_with_audio_shorter_than_its_frames_positions(tiny, ours):
    """The closing markers start after the last merged run (the video's), as the reference does."""
    layout = ours.thinker_config.mrope_layout
    prompt = Prompt().text(2).video_with_audio(2, 8, 8, 40, layout).text(2)  # 5 audio tokens, 16 per frame
    _, reference = prompt.media()
    ids = torch.tensor([prompt.ids])
    expected, _ = tiny.thinker.model.get_rope_index(
        ids, None, reference["video_grid_thw"], torch.ones_like(ids), True,
        reference["feature_attention_mask"].sum(-1), reference["video_second_per_grid"])
    got = qwen3_omni_positions(prompt.ids, layout, None, reference["video_grid_thw"], prompt.seconds)
    assert torch.equal(got.positions, expected[:, 0].long())


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(tiny, ours, case):
    prompt = prompts(ours.thinker_config.mrope_layout)[case]
    assert_logits_equal_reference(tiny.thinker, ours, prompt.ids, *prompt.media())


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_match_transformers_generate(tiny, ours, case):
    prompt = prompts(ours.thinker_config.mrope_layout)[case]
    assert_greedy_equals_generate(tiny.thinker, ours, prompt.ids, *prompt.media(seed=6))


def test_chunked_and_batched_prefill_equal_one_whole_prefill(ours):
    """Chunks cut through a video with its audio (DeepStack rows sliced with them) and a batch of
    two prompts of different lengths give each prompt's own whole-prefill hidden states."""
    layout = ours.thinker_config.mrope_layout
    first, second = prompts(layout)["everything"], prompts(layout)["audio"]
    prepared = [ours.prepare_prompt(p.ids, p.media(seed=i)[0]) for i, p in enumerate((first, second))]
    # cut inside the video's merged frames and audio
    assert_chunked_and_batched_prefill_equal_whole(ours, *prepared, cut=len(prepared[0]) - 20)


def test_config_reads_checkpoint_names(tiny):
    raw = read_config(tiny.directory)
    config = Qwen3OmniThinkerConfig.from_dict(raw)
    assert config.text_config.qk_norm and config.text_config.mrope_interleaved
    assert config.text_config.mrope_section == (2, 3, 3) and config.text_config.is_moe_layer(0)
    assert not config.text_config.is_moe_layer(1)
    assert config.position_id_per_seconds == raw["thinker_config"]["position_id_per_seconds"] == 13
    assert config.audio_tokens(250) == 33 and config.vision_config.deepstack_visual_indexes == (0, 1)


def test_speech_parts_are_left_to_their_own_loaders(tiny, ours):
    """The checkpoint holds talker and Code2Wav keys; the thinker loader reads none of them
    (model/qwen3_omni_talker.py and model/qwen3_omni_code2wav.py load those)."""
    assert load_prefixed_tensors(tiny.directory, "talker.") and load_prefixed_tensors(tiny.directory, "code2wav.")
    assert not any(name.startswith(("talker", "code2wav", "code_predictor")) for name in ours.state_dict())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda state: state.pop("model.layers.0.mlp.experts.3.up_proj.weight"),
         "missing keys: model.layers.0.mlp.experts.3.up_proj.weight"),
        (lambda state: state.update({"visual.merger_list.2.ln_q.weight": torch.zeros(2)}),
         "unexpected keys: visual.merger_list.2.ln_q.weight"),
        (lambda state: state.update({"audio_tower.conv_out.weight": torch.zeros(32, 7)}),
         "shape mismatch: audio_tower.conv_out.weight"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tiny, tmp_path, change, message):
    assert_edited_thinker_is_a_clear_error(tiny.directory, tmp_path, change, message, load_qwen3_omni_thinker)
