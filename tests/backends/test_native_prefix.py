"""Prefix reuse in the native Qwen2.5-Omni engine's paged thinker cache (tiny random checkpoint,
float32): a prompt that starts like an earlier one (the next turn of a chat, the same image)
computes only what differs and replies (and speaks) exactly what a fresh engine does; a different image
behind the same placeholder tokens is never mistaken for the first; blocks are accounted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.backends.native_engine import Batch, Job
from omnilive.backends.native_media_keys import MediaEncoderCache, media_items, media_spans
from omnilive.types import EngineError, ImageInput, Message, SamplingParams
from tests.backends.test_native_batching import ASKS, Result, assert_same, tone

pytest.importorskip("transformers")

BLOCK = 16
QUESTION = "What is in this picture?"
GREEDY = SamplingParams(temperature=0.0, max_tokens=9)


def image(seed: int) -> ImageInput:
    return ImageInput(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (60, 90, 3), dtype=np.uint8)))


def job(model, messages: tuple[Message, ...], sampling: SamplingParams = GREEDY, voice: str | None = None) -> Result:
    outputs: list = []
    prompt = model.processor.build(messages, speak=voice is not None)
    return Result(Job(prompt, sampling, model.voices[voice] if voice else None, outputs.append), outputs)


def run(batch: Batch, result: Result) -> Result:
    batch.add(result.job)
    batch.run_until_idle()
    return result


def computed_by(batch: Batch, result: Result) -> int:
    """Prompt tokens the batch ran through the thinker for this request."""
    before = batch.computed_prompt_tokens
    run(batch, result)
    return batch.computed_prompt_tokens - before


def test_the_second_turn_of_a_chat_with_an_image_reuses_the_first_turns_blocks(model, runner):
    first_turn = (Message("user", (QUESTION, image(0))),)
    batch = Batch(runner, max_batch=2)
    first = job(model, first_turn)
    assert computed_by(batch, first) == len(first.job.prompt) and first.job.cached == 0
    second_turn = (*first_turn, Message("assistant", (first.text,)), Message("user", ("And its colours?",)))
    second = job(model, second_turn)
    computed = computed_by(batch, second)
    # every full block of the first prompt is reused: it ends mid-block, so 144 of its 152 tokens
    assert second.job.cached >= len(first.job.prompt) // BLOCK * BLOCK > 0
    assert computed == len(second.job.prompt) - second.job.cached < len(second.job.prompt)
    assert_same(second, run(Batch(runner, max_batch=1), job(model, second_turn)))
    assert second.finished.usage.prompt_tokens == len(second.job.prompt)  # usage counts the whole prompt


def test_the_same_text_with_a_different_image_reuses_only_the_blocks_before_it(model, runner):
    batch = Batch(runner, max_batch=2)
    run(batch, job(model, (Message("user", (QUESTION, image(0))),)))
    other = job(model, (Message("user", (QUESTION, image(1))),))
    items = media_items(other.job.prompt.media, model.thinker.thinker_config.mrope_layout)
    (span,) = media_spans(other.job.prompt.input_ids, items)
    run(batch, other)
    assert other.job.cached == span.start // BLOCK * BLOCK > 0  # placeholders equal, pixels not
    assert_same(other, run(Batch(runner, max_batch=1), job(model, (Message("user", (QUESTION, image(1))),))))
    again = run(batch, job(model, (Message("user", (QUESTION, image(1))),)))
    assert again.job.cached > span.end  # the same image again: reused past it
    assert again.job.token_ids == other.job.token_ids


def test_a_spoken_request_reuses_cached_blocks_and_speaks_as_it_would_alone(model, runner):
    ask = ASKS["spoken"]
    messages = (Message("user", ask.content),)
    alone = run(Batch(runner, max_batch=1), job(model, messages, ask.sampling, ask.voice))
    assert alone.job.cached == 0
    batch = Batch(runner, max_batch=2)
    run(batch, job(model, messages, SamplingParams(temperature=0.0, max_tokens=4)))  # a text reply publishes the prompt
    spoken = job(model, messages, ask.sampling, ask.voice)
    computed = computed_by(batch, spoken)
    # the talker's prefill takes the cached blocks' hidden states: same codes, same audio
    assert spoken.job.cached == (len(spoken.job.prompt) - 1) // BLOCK * BLOCK > 0
    assert computed == len(spoken.job.prompt) - spoken.job.cached
    assert_same(spoken, alone)

    # the next turn of a voice chat computes only what was added (the reply's blocks are cached too)
    next_turn = (*messages, Message("assistant", (spoken.text,)), Message("user", ("Say more.",)))
    second = job(model, next_turn, ask.sampling, ask.voice)
    computed = computed_by(batch, second)
    assert second.job.cached >= len(spoken.job.prompt) // BLOCK * BLOCK
    assert computed == len(second.job.prompt) - second.job.cached < len(second.job.prompt) // 2
    assert_same(second, run(Batch(runner, max_batch=1), job(model, next_turn, ask.sampling, ask.voice)))


def test_requests_wait_for_blocks_and_a_prompt_that_never_fits_is_refused(model, runner):
    messages = (Message("user", ("Tell me a long story about the sea.",)),)
    sampling = SamplingParams(temperature=0.0, max_tokens=20)
    length = len(model.processor.build(messages))
    needed = -(-(length + 19) // BLOCK)  # the prompt and every reply token fed back
    shared = (length - 1) // BLOCK  # full prompt blocks a later request references
    # room for one request and a second that shares its prompt; not for a third
    batch = Batch(runner, max_batch=3, num_blocks=needed + (needed - shared))
    results = [job(model, messages, sampling) for _ in range(3)]
    for result in results:
        batch.add(result.job)
    most_running, waited_with_rows_free = 0, False
    while batch.has_work():
        batch.step()
        most_running = max(most_running, len(batch.running))
        waited_with_rows_free |= bool(batch.waiting) and batch.cache.num_free_rows > 0
        held = {block for job in batch.running for block in job.blocks.block_ids}  # shared ones once
        assert len(held) + batch.blocks.num_free == batch.blocks.num_blocks
    assert most_running == 2 and waited_with_rows_free
    assert [result.job.cached for result in results] == [0, shared * BLOCK, shared * BLOCK]
    assert batch.blocks.num_free == batch.blocks.num_blocks and batch.cache.num_free_rows == 3
    reference = run(Batch(runner, max_batch=1), job(model, messages, sampling))
    for result in results:
        assert_same(result, reference)
    too_long = job(model, messages, SamplingParams(temperature=0.0, max_tokens=batch.blocks.num_blocks * BLOCK))
    with pytest.raises(EngineError, match="exceeds the context length"):  # what the blocks can hold
        batch.add(too_long.job)


def test_an_aborted_request_gives_its_blocks_back_at_the_next_step(model, runner):
    batch = Batch(runner, max_batch=2)
    victim = job(model, (Message("user", (QUESTION, image(2))),), SamplingParams(temperature=0.0, max_tokens=50))
    batch.add(victim.job)
    while not victim.job.token_ids:
        batch.step()
    assert batch.blocks.num_free < batch.blocks.num_blocks
    batch.abort(victim.job)
    batch.step()
    assert victim.finished.finish_reason == "abort" and not victim.job.blocks.block_ids
    assert batch.blocks.num_free == batch.blocks.num_blocks and batch.cache.num_free_rows == 2


def test_media_sent_again_are_not_encoded_again(model, runner):
    """The next turn of a chat carries the earlier turns' images: only the new one is encoded,
    and the reply is what a server without the media cache gives."""
    encoded: list[int] = []  # vision encoder calls: items in each
    hook = model.thinker.visual.register_forward_hook(lambda module, args, out: encoded.append(len(args[1])))
    first_turn = (Message("user", (QUESTION, image(0), image(1))),)
    batch = Batch(runner, max_batch=2)
    try:
        first = run(batch, job(model, first_turn))
        assert encoded == [1, 1]  # one image per encoder call
        second_turn = (*first_turn, Message("assistant", (first.text,)), Message("user", ("And this?", image(2))))
        second = run(batch, job(model, second_turn))
        assert encoded == [1, 1, 1] and batch.media_cache.hits == 2
        uncached = run(Batch(runner, max_batch=1, media_cache_bytes=0), job(model, second_turn))
        assert len(encoded) == 6  # without a cache every image is encoded again
    finally:
        hook.remove()
    assert_same(second, uncached)


def test_media_encoded_one_item_at_a_time_equal_them_encoded_together(model):
    """The cache encodes item by item; the prompt's embeddings are those of one encoder call
    per kind (images, audios)."""
    prompt = model.processor.build((Message("user", (QUESTION, image(3), tone(0.4), image(4), tone(0.3))),),
                                   speak=False)
    thinker = model.thinker
    items = media_items(prompt.media, thinker.thinker_config.mrope_layout)
    assert [item.count > 0 for item in items] == [True] * 4
    together = thinker.encode_media(prompt.media)
    one_by_one = MediaEncoderCache(0).features(items, thinker.encode_media)
    assert together.keys() == one_by_one.keys()
    for token, rows in together.items():
        torch.testing.assert_close(one_by_one[token], rows, atol=1e-5, rtol=1e-5)
    cache = MediaEncoderCache(max_bytes=sum(rows.numel() * rows.element_size() for rows in together.values()))
    cache.features(items, thinker.encode_media)
    again = cache.features(items, thinker.encode_media)
    assert cache.hits == 4 and cache.misses == 4
    for token, rows in together.items():
        torch.testing.assert_close(again[token], rows, atol=1e-5, rtol=1e-5)
    small = MediaEncoderCache(max_bytes=1)  # nothing fits: nothing kept, still right
    small.features(items, thinker.encode_media)
    assert small.features(items, thinker.encode_media).keys() == together.keys() and small.hits == 0
