"""What the thinker parity tests (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen2.5-Omni, Qwen3-Omni against
transformers) share: random encoder inputs in both models' formats, our prefill and greedy
decoding of a prepared prompt, paged chunked prefill, and a checkpoint saved again with edits."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnilive.media.qwen_preprocess import VisionPatches
from omnilive.model.omni_checkpoint import THINKER_PREFIX, load_prefixed_tensors
from omnilive.model.thinker import ThinkerMedia
from omnilive.model.weights import WeightsMismatchError

TOLERANCE = 1e-4


def padded_audio_features(mels: list[torch.Tensor], frames: list[int]) -> dict:
    """The processor's padded audio batch: [audios, 128, longest] + frame mask."""
    longest = max(frames)
    return {"input_features": torch.stack([torch.nn.functional.pad(m, (0, longest - m.shape[1])) for m in mels]),
            "feature_attention_mask": (torch.arange(longest)[None] < torch.tensor(frames)[:, None]).long()}


def random_media(patch_dim: int, images: list, videos: list, seconds: list, audio_frames: list = (), *,
                 seed: int, seconds_key: str) -> tuple[ThinkerMedia, dict]:
    """Random patches (and log-mel frames) fitting a prompt's media grids, in our format and as
    transformers' keyword arguments; the videos' seconds per temporal patch go under `seconds_key`."""
    generator = torch.Generator().manual_seed(seed)

    def patches(grids):
        if not grids:
            return None
        grid_thw = torch.tensor(grids)
        return VisionPatches(torch.randn(int(grid_thw.prod(-1).sum()), patch_dim, generator=generator), grid_thw)

    image_patches, video_patches = patches(images), patches(videos)
    mels = [torch.randn(128, frames, generator=generator) for frames in audio_frames]
    ours = ThinkerMedia(images=image_patches, videos=video_patches, video_seconds_per_grid=tuple(seconds),
                        audio_mel=torch.cat(mels, dim=1) if mels else None,
                        audio_frames=torch.tensor(audio_frames) if mels else None)
    reference = {}
    if image_patches is not None:
        reference |= {"pixel_values": image_patches.pixel_values, "image_grid_thw": image_patches.grid_thw}
    if video_patches is not None:
        reference |= {"pixel_values_videos": video_patches.pixel_values, "video_grid_thw": video_patches.grid_thw,
                      seconds_key: torch.tensor(seconds)}
    if mels:
        reference |= padded_audio_features(mels, list(audio_frames))
    return ours, reference


def reference_logits(model, ids: list[int], reference: dict) -> torch.Tensor:
    model.model.rope_deltas = None  # transformers caches it across calls
    ids = torch.tensor([ids])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), **reference).logits[0]


def prefill(ours, prepared) -> tuple[torch.Tensor, object]:
    cache = ours.make_cache(1, 512)
    with torch.no_grad():
        hidden = ours(cache=cache, slots=torch.tensor([0]), **prepared.prefill_inputs())
    return ours.compute_logits(hidden)[0], cache


def assert_logits_equal_reference(reference_model, ours, ids: list[int], media: ThinkerMedia,
                                  reference: dict) -> tuple[object, torch.Tensor]:
    """Our prefill's logits equal transformers' forward's; the prepared prompt and those logits."""
    expected = reference_logits(reference_model, ids, reference)
    prepared = ours.prepare_prompt(ids, media)
    got, _ = prefill(ours, prepared)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE
    return prepared, expected


def greedy_tokens(ours, prepared, n: int) -> list[int]:
    """Our prefill, then n - 1 one-token decode steps, each picking the likeliest token."""
    logits, cache = prefill(ours, prepared)
    tokens = [int(logits[-1].argmax())]
    for step in range(n - 1):
        position = torch.tensor([[len(prepared) + step]])
        with torch.no_grad():
            hidden = ours(torch.tensor([[tokens[-1]]]), position, cache, torch.tensor([0]),
                          rope_positions=position + prepared.rope_delta)
        tokens.append(int(ours.compute_logits(hidden[0, -1]).argmax()))
    return tokens


def assert_greedy_equals_generate(reference_model, ours, ids: list[int], media: ThinkerMedia, reference: dict,
                                  n: int = 16, distinct_more_than: int = 1) -> None:
    """Our prefill and one-token decode steps pick what transformers' generate picks."""
    ids_tensor = torch.tensor([ids])
    reference_model.model.rope_deltas = None
    with torch.no_grad():
        generated = reference_model.generate(input_ids=ids_tensor, attention_mask=torch.ones_like(ids_tensor),
                                             max_new_tokens=n, min_new_tokens=n, do_sample=False, **reference)
    expected = generated[0, len(ids):].tolist()
    tokens = greedy_tokens(ours, ours.prepare_prompt(ids, media), n)
    assert len(set(expected)) > distinct_more_than  # a varied sequence: a comparison that can fail
    assert tokens == expected


def paged_prefill(ours, rows: list[tuple], cache) -> torch.Tensor:
    """One forward of several (prepared prompt, start, end, cache row) chunks, right-padded as
    the engine's runner pads them; hidden states [rows, width, H]."""
    width = max(end - start for _, start, end, _ in rows)
    hidden = ours.config.hidden_size
    positions = torch.full((len(rows), width), -1)
    embeds = torch.zeros(len(rows), width, hidden)
    rope = torch.zeros(3, len(rows), width, dtype=torch.long)
    config = getattr(ours, "vl_config", None) or ours.thinker_config  # Qwen3-VL or Qwen3-Omni
    deepstack = torch.zeros(config.deepstack_layers, len(rows), width, hidden)
    for i, (prepared, start, end, _) in enumerate(rows):
        n = end - start
        positions[i, :n] = torch.arange(start, end)
        embeds[i, :n] = prepared.embeds[start:end]
        rope[:, i, :n] = prepared.rope.positions[:, start:end]
        if prepared.deepstack is not None:
            deepstack[:, i, :n] = prepared.deepstack.dense(start, end)
    slots = torch.tensor([row for *_, row in rows])
    with torch.no_grad():
        return ours(None, positions, cache, slots, inputs_embeds=embeds, rope_positions=rope, deepstack=deepstack)


def assert_chunked_and_batched_prefill_equal_whole(ours, first, second, cut: int) -> None:
    """`first` cut at `cut` into two chunks, its head in one batch with the whole of `second`
    (prompts of different lengths): each gives its own whole-prefill hidden states."""
    alone = []
    for prepared in (first, second):
        cache = ours.make_paged_cache(1, 256, block_size=8)
        cache.set_blocks(0, 0, list(range(cache.max_blocks_per_row)))
        alone.append(paged_prefill(ours, [(prepared, 0, len(prepared), 0)], cache)[0])
    cache = ours.make_paged_cache(2, 256, block_size=8)
    per_row = cache.max_blocks_per_row
    cache.set_blocks(0, 0, list(range(per_row)))
    cache.set_blocks(1, 0, list(range(per_row, 2 * per_row)))
    head = paged_prefill(ours, [(first, 0, cut, 0), (second, 0, len(second), 1)], cache)
    tail = paged_prefill(ours, [(first, cut, len(first), 0)], cache)
    chunked = torch.cat([head[0, :cut], tail[0]])
    assert (chunked - alone[0]).abs().max().item() <= 1e-5
    assert (head[1, : len(second)] - alone[1]).abs().max().item() <= 1e-5


def resaved(directory: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of a checkpoint directory whose model.safetensors went through `edit`."""
    edited = tmp_path / "edited"
    shutil.copytree(directory, edited)
    tensors = load_file(edited / "model.safetensors")
    edit(tensors)
    save_file(tensors, edited / "model.safetensors")
    return edited


def assert_edited_thinker_is_a_clear_error(directory: Path, tmp_path: Path, change: Callable[[dict], None],
                                           message: str, load: Callable) -> None:
    """An omni checkpoint whose `thinker.` tensors went through `change` fails to load, naming what."""
    state = load_prefixed_tensors(directory, THINKER_PREFIX)
    change(state)
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    save_file({THINKER_PREFIX + key: t.contiguous() for key, t in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match=message):
        load(tmp_path, dtype=torch.float32)
