"""Our Qwen2.5-Omni thinker against transformers' (tiny random checkpoint, float32)."""

from __future__ import annotations

import json

import pytest
import torch

from omnilive.model.omni_checkpoint import load_thinker
from omnilive.model.thinker import OmniThinker, ThinkerConfig, ThinkerMedia
from tests.model.omni_tiny import build_tiny_omni
from tests.model.parity import TOLERANCE, assert_edited_thinker_is_a_clear_error, greedy_tokens, random_media
from tests.model.test_rope_index import Prompt

pytest.importorskip("transformers")

PATCH_DIM = 3 * 2 * 14 * 14


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_omni(tmp_path_factory.mktemp("omni"), with_talker=False)


@pytest.fixture(scope="module")
def ours(tiny) -> OmniThinker:
    return load_thinker(tiny.directory, dtype=torch.float32)


def media_for(prompt: Prompt, seed: int = 0) -> dict:
    """Random encoder inputs fitting the prompt, in both models' formats."""
    ours, reference = random_media(PATCH_DIM, prompt.images, prompt.videos, prompt.seconds, prompt.audio_frames,
                                   seed=seed, seconds_key="video_second_per_grid")
    return {"ours": ours, "reference": {"use_audio_in_video": prompt.audio_in_video, **reference}}


PROMPTS = {
    "text": lambda: Prompt().text(12),
    "image": lambda: Prompt().text(3).image(1, 8, 12).text(4),
    "audio": lambda: Prompt().text(2).audio(13).text(3),
    "video": lambda: Prompt().text(2).video(4, 4, 6, seconds=0.5).text(2),
    "video_with_audio": lambda: Prompt().text(3).video_with_audio(3, 4, 4, seconds=1.0, audio_tokens=60).text(3),
}


def reference_logits(tiny, prompt: Prompt, media: dict) -> torch.Tensor:
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        out = tiny.thinker(input_ids=ids, attention_mask=torch.ones_like(ids), **media["reference"])
    return out.logits[0]


def prefill(ours: OmniThinker, prompt, cache, slot: int = 0, chunks: list[int] | None = None) -> torch.Tensor:
    """Run a prepared prompt into `slot` in the given chunk sizes → logits [T, vocab]."""
    sizes = chunks or [len(prompt)]
    logits, start = [], 0
    for size in sizes:
        inputs = prompt.prefill_inputs(start, start + size)
        with torch.no_grad():
            logits.append(ours.compute_logits(ours(cache=cache, slots=torch.tensor([slot]), **inputs))[0])
        start += size
    assert start == len(prompt)
    return torch.cat(logits)


def decode(ours: OmniThinker, tokens: list[int], positions: list[int], deltas: list[int], cache, slots: list[int]):
    """One decode step for several rows → logits [B, vocab]."""
    positions_t = torch.tensor(positions)[:, None]
    with torch.no_grad():
        hidden = ours(torch.tensor(tokens)[:, None], positions_t, cache, torch.tensor(slots),
                      rope_positions=positions_t + torch.tensor(deltas)[:, None])
    return ours.compute_logits(hidden[:, -1])


@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_logits_match_transformers(tiny, ours, case):
    prompt = PROMPTS[case]()
    media = media_for(prompt)
    expected = reference_logits(tiny, prompt, media)
    prepared = ours.prepare_prompt(prompt.ids, media["ours"])
    got = prefill(ours, prepared, ours.make_cache(1, 512))
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_greedy_tokens_match_transformers_generate(tiny, ours):
    prompt = Prompt().text(3).image(1, 8, 8).text(2)
    media = media_for(prompt, seed=3)
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        generated = tiny.thinker.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
            do_sample=False, **media["reference"],
        )
    expected = generated[0, len(prompt.ids):].tolist()

    tokens = greedy_tokens(ours, ours.prepare_prompt(prompt.ids, media["ours"]), 32)
    assert len(set(expected)) > 3  # a varied sequence, not one token repeated
    assert tokens == expected


def test_chunked_and_token_by_token_prefill_equal_whole(ours):
    prompt = PROMPTS["video_with_audio"]()
    prepared = ours.prepare_prompt(prompt.ids, media_for(prompt)["ours"])
    whole = prefill(ours, prepared, ours.make_cache(1, 512))
    # chunk edges fall inside the video/audio interleave
    chunked = prefill(ours, prepared, ours.make_cache(1, 512), chunks=[5, 17, 40, len(prepared) - 62])
    stepwise = prefill(ours, prepared, ours.make_cache(1, 512), chunks=[1] * len(prepared))
    assert (chunked - whole).abs().max().item() <= 1e-5
    assert (stepwise - whole).abs().max().item() <= 1e-5


def test_decode_with_cache_equals_one_pass_without(tiny, ours):
    """Decode steps after a multimodal prompt equal one forward over prompt + new tokens, in
    ours (cache vs single pass) and in transformers given the same continued positions."""
    prompt = PROMPTS["video_with_audio"]()
    media = media_for(prompt)
    prepared = ours.prepare_prompt(prompt.ids, media["ours"])
    new_tokens = [7, 42, 99]
    cache = ours.make_cache(1, 512)
    prefill(ours, prepared, cache)
    stepped = torch.stack([
        decode(ours, [token], [len(prepared) + i], [prepared.rope_delta], cache, [0])[0]
        for i, token in enumerate(new_tokens)
    ])

    full_ids = torch.tensor(prompt.ids + new_tokens)
    decode_rope = torch.arange(len(prepared), len(full_ids)) + prepared.rope_delta
    rope = torch.cat([prepared.rope.positions, decode_rope.expand(3, -1)], dim=1)  # [3, T + 3]
    embeds = torch.cat([prepared.embeds, ours.model.embed_tokens(torch.tensor(new_tokens))])
    with torch.no_grad():
        one_pass = ours.compute_logits(ours(
            full_ids[None], torch.arange(len(full_ids))[None], ours.make_cache(1, 512), torch.tensor([0]),
            inputs_embeds=embeds[None], rope_positions=rope[:, None],
        ))[0, len(prepared) - 1 : -1]
        reference = tiny.thinker(input_ids=full_ids[None], attention_mask=torch.ones(1, len(full_ids)),
                                 position_ids=rope[:, None], **media["reference"]).logits[0, len(prepared) - 1 : -1]
    assert (stepped[:-1] - one_pass[1:]).abs().max().item() <= 1e-5
    assert (one_pass - reference).abs().max().item() <= TOLERANCE


def test_batch_of_two_equals_each_alone(ours):
    prompts = [PROMPTS["image"](), PROMPTS["audio"]()]
    prepared = [ours.prepare_prompt(p.ids, media_for(p, seed=i)["ours"]) for i, p in enumerate(prompts)]
    alone = [prefill(ours, p, ours.make_cache(1, 512)) for p in prepared]

    # right-pad to one [2, T] batch: padding has position -1
    length = max(len(p) for p in prepared)
    rows = [p.prefill_inputs() for p in prepared]
    pad = [length - len(p) for p in prepared]
    input_ids = torch.stack([torch.nn.functional.pad(r["input_ids"][0], (0, n)) for r, n in zip(rows, pad)])
    positions = torch.stack([torch.nn.functional.pad(r["positions"][0], (0, n), value=-1) for r, n in zip(rows, pad)])
    embeds = torch.stack([torch.nn.functional.pad(r["inputs_embeds"][0], (0, 0, 0, n)) for r, n in zip(rows, pad)])
    rope = torch.stack([torch.nn.functional.pad(r["rope_positions"][:, 0], (0, n)) for r, n in zip(rows, pad)], dim=1)
    cache = ours.make_cache(2, 512)
    with torch.no_grad():
        batched = ours.compute_logits(ours(input_ids, positions, cache, torch.tensor([1, 0]),
                                           inputs_embeds=embeds, rope_positions=rope))
    for row, single in enumerate(alone):
        assert (batched[row, : len(prepared[row])] - single).abs().max().item() <= 1e-5

    # one decode step for both rows at their own positions, against each row alone
    lengths, deltas = [len(p) for p in prepared], [p.rope_delta for p in prepared]
    both = decode(ours, [5, 6], lengths, deltas, cache, [1, 0])
    for row, token in enumerate([5, 6]):
        single_cache = ours.make_cache(1, 512)
        prefill(ours, prepared[row], single_cache)
        single = decode(ours, [token], [lengths[row]], [deltas[row]], single_cache, [0])[0]
        assert (both[row] - single).abs().max().item() <= 1e-5


def test_placeholder_count_must_match_the_media(ours):
    prompt = PROMPTS["image"]()
    media = media_for(prompt)["ours"]
    with pytest.raises(ValueError, match="more images than image_grid_thw"):
        ours.prepare_prompt(prompt.ids, ThinkerMedia())
    with pytest.raises(ValueError, match="has 24 placeholder tokens 141 but the media give 0 rows"):
        ours.embed(torch.tensor(prompt.ids), ThinkerMedia())
    prompt.ids.insert(3, prompt.ids[4])  # one image token too many
    with pytest.raises(ValueError, match="placeholder tokens"):
        ours.embed(torch.tensor(prompt.ids), media)


def test_config_reads_checkpoint_names(tiny):
    raw = json.loads((tiny.directory / "config.json").read_text())
    config = ThinkerConfig.from_dict(raw)
    assert config.text_config.mrope_section == (2, 3, 3) and config.text_config.attention_bias
    assert config.image_token_index == raw["thinker_config"]["image_token_index"]
    assert config.mrope_layout.vision_start_token_id == raw["thinker_config"]["vision_start_token_id"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda state: state.pop("model.layers.1.self_attn.k_proj.bias"), "missing keys: model.layers.1.self_attn.k_proj.bias"),
        (lambda state: state.update({"visual.extra.weight": torch.zeros(2)}), "unexpected keys: visual.extra.weight"),
        (lambda state: state.update({"audio_tower.proj.weight": torch.zeros(64, 31)}), "shape mismatch: audio_tower.proj.weight"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tiny, tmp_path, change, message):
    assert_edited_thinker_is_a_clear_error(tiny.directory, tmp_path, change, message, load_thinker)
