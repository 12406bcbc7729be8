"""Our Qwen3-Omni thinker against transformers' (tiny random checkpoint, float32): the AuT audio
encoder, TM-RoPE positions, logits and greedy tokens for text, image, audio, video and
video-with-audio prompts, and loading (every `thinker.` key consumed)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from omnilive.media.qwen_preprocess import VisionPatches
from tests.model.test_qwen3_vl import _paged_prefill
from omnilive.model.omni_checkpoint import THINKER_PREFIX, load_prefixed_tensors, read_config
from omnilive.model.qwen3_omni import Qwen3OmniThinkerConfig, load_qwen3_omni_thinker
from omnilive.model.qwen3_omni_audio import aut_output_tokens
from omnilive.model.qwen3_omni_rope import qwen3_omni_positions, video_with_audio_placeholders
from omnilive.model.thinker import ThinkerMedia
from omnilive.model.weights import WeightsMismatchError
from tests.model.qwen3_omni_tiny import IDS, PATCH, build_tiny_qwen3_omni

pytest.importorskip("transformers")

TOLERANCE = 1e-4
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
        generator = torch.Generator().manual_seed(seed)

        def patches(grids):
            if not grids:
                return None
            grid_thw = torch.tensor(grids)
            return VisionPatches(torch.randn(int(grid_thw.prod(-1).sum()), PATCH_DIM, generator=generator), grid_thw)

        images, videos = patches(self.images), patches(self.videos)
        mels = [torch.randn(128, frames, generator=generator) for frames in self.audio_frames]
        ours = ThinkerMedia(images=images, videos=videos, video_seconds_per_grid=tuple(self.seconds),
                            audio_mel=torch.cat(mels, dim=1) if mels else None,
                            audio_frames=torch.tensor(self.audio_frames) if mels else None)
        reference = {"use_audio_in_video": self.audio_in_video}
        if images is not None:
            reference |= {"pixel_values": images.pixel_values, "image_grid_thw": images.grid_thw}
        if videos is not None:
            reference |= {"pixel_values_videos": videos.pixel_values, "video_grid_thw": videos.grid_thw,
                          "video_second_per_grid": torch.tensor(self.seconds)}
        if mels:  # the processor's padded batch: [audios, 128, longest] + frame mask
            longest = max(self.audio_frames)
            reference["input_features"] = torch.stack([torch.nn.functional.pad(m, (0, longest - m.shape[1]))
                                                       for m in mels])
            reference["feature_attention_mask"] = (
                torch.arange(longest)[None] < torch.tensor(self.audio_frames)[:, None]).long()
        return ours, reference


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


def reference_logits(tiny, prompt: Prompt, reference: dict) -> torch.Tensor:
    tiny.thinker.model.rope_deltas = None  # transformers caches it across calls
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        return tiny.thinker(input_ids=ids, attention_mask=torch.ones_like(ids), **reference).logits[0]


def prefill(ours, prepared):
    cache = ours.make_cache(1, 512)
    with torch.no_grad():
        hidden = ours(cache=cache, slots=torch.tensor([0]), **prepared.prefill_inputs())
    return ours.compute_logits(hidden)[0], cache


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
    media, reference = prompt.media()
    expected = reference_logits(tiny, prompt, reference)
    prepared = ours.prepare_prompt(prompt.ids, media)
    got, _ = prefill(ours, prepared)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_match_transformers_generate(tiny, ours, case):
    prompt = prompts(ours.thinker_config.mrope_layout)[case]
    media, reference = prompt.media(seed=6)
    ids, n = torch.tensor([prompt.ids]), 16
    tiny.thinker.model.rope_deltas = None
    with torch.no_grad():
        generated = tiny.thinker.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                          min_new_tokens=n, do_sample=False, **reference)
    expected = generated[0, len(prompt.ids):].tolist()
    prepared = ours.prepare_prompt(prompt.ids, media)
    logits, cache = prefill(ours, prepared)
    tokens = [int(logits[-1].argmax())]
    for step in range(n - 1):
        position = torch.tensor([[len(prepared) + step]])
        with torch.no_grad():
            hidden = ours(torch.tensor([[tokens[-1]]]), position, cache, torch.tensor([0]),
                          rope_positions=position + prepared.rope_delta)
        tokens.append(int(ours.compute_logits(hidden[0, -1]).argmax()))
    assert len(set(expected)) > 1  # not one token repeated: a comparison that can fail
    assert tokens == expected


def test_chunked_and_batched_prefill_equal_one_whole_prefill(ours):
    """Chunks cut through a video with its audio (DeepStack rows sliced with them) and a batch of
    two prompts of different lengths give each prompt's own whole-prefill hidden states."""
    layout = ours.thinker_config.mrope_layout
    first, second = prompts(layout)["everything"], prompts(layout)["audio"]
    prepared = [ours.prepare_prompt(p.ids, p.media(seed=i)[0]) for i, p in enumerate((first, second))]
    alone = []
    for p in prepared:
        cache = ours.make_paged_cache(1, 256, block_size=8)
        cache.set_blocks(0, 0, list(range(cache.max_blocks_per_row)))
        alone.append(_paged_prefill(ours, [(p, 0, len(p), 0)], cache)[0])
    cache = ours.make_paged_cache(2, 256, block_size=8)
    per_row = cache.max_blocks_per_row
    cache.set_blocks(0, 0, list(range(per_row)))
    cache.set_blocks(1, 0, list(range(per_row, 2 * per_row)))
    cut = len(prepared[0]) - 20  # inside the video's merged frames and audio
    head = _paged_prefill(ours, [(prepared[0], 0, cut, 0), (prepared[1], 0, len(prepared[1]), 1)], cache)
    tail = _paged_prefill(ours, [(prepared[0], cut, len(prepared[0]), 0)], cache)
    chunked = torch.cat([head[0, :cut], tail[0]])
    assert (chunked - alone[0]).abs().max().item() <= 1e-5
    assert (head[1, : len(prepared[1])] - alone[1]).abs().max().item() <= 1e-5


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
    state = load_prefixed_tensors(tiny.directory, THINKER_PREFIX)
    change(state)
    shutil.copy(tiny.directory / "config.json", tmp_path / "config.json")
    save_file({THINKER_PREFIX + key: t.contiguous() for key, t in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match=message):
        load_qwen3_omni_thinker(tmp_path, dtype=torch.float32)
