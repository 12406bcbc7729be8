"""The paged KV cache: model parity with the slot cache, block sharing, eviction, preemption."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_llm_engine import (
    GREEDY,
    MODEL,
    SEEDED,
    TOKENIZER,
    assert_same_generation,
    generate_alone,
    make_engine,
    prompt,
    run_to_end,
    tokens_of,
)

from omnilive.engine.block_manager import BlockManager, BlockTable, MediaSpan
from omnilive.types import EngineError, SamplingParams

SYSTEM = TOKENIZER.encode("<|im_start|>system\nYou are a helpful assistant who answers in short sentences.<|im_end|>\n")


def no_cache_logits(ids: list[int]) -> torch.Tensor:
    """The last token's logits from a fresh cache holding nothing but this sequence."""
    hidden = MODEL(torch.tensor([ids]), torch.arange(len(ids))[None], MODEL.make_cache(1, len(ids)), torch.tensor([0]))
    return MODEL.compute_logits(hidden[0, -1])


@torch.inference_mode()
def test_paged_forward_equals_slot_forward_and_no_cache():
    block_size = 4
    rows = [TOKENIZER.encode(text) for text in ("hello", "the cat sat on", "a longer row of text, here")]
    paged = MODEL.make_paged_cache(max_rows=3, max_len=64, block_size=block_size, num_blocks=60)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(60, generator=generator).tolist()  # rows get scattered, interleaved blocks
    for row in range(3):
        paged.set_blocks(row, 0, order[row * 16 : (row + 1) * 16])
    slot = MODEL.make_cache(3, 64)
    row_ids = torch.arange(3)

    def both(input_ids, positions, which=row_ids) -> list[torch.Tensor]:
        return [MODEL.compute_logits(MODEL(input_ids, positions, cache, which)) for cache in (paged, slot)]

    # 1. one padded prefill of each row's first part (rows of different lengths)
    firsts = [3, 7, 9]
    T = max(firsts)
    input_ids = torch.zeros(3, T, dtype=torch.long)
    positions = torch.full((3, T), -1)
    for i, (ids, n) in enumerate(zip(rows, firsts)):
        input_ids[i, :n], positions[i, :n] = torch.tensor(ids[:n]), torch.arange(n)
    for logits in both(input_ids, positions):
        for i, n in enumerate(firsts):
            torch.testing.assert_close(logits[i, n - 1], no_cache_logits(rows[i][:n]), atol=1e-5, rtol=0)
    # 2. the rest of each row, one row at a time (chunked prefill, rows crossing blocks)
    for i, (ids, n) in enumerate(zip(rows, firsts)):
        rest = torch.tensor([ids[n:]])
        for logits in both(rest, torch.arange(n, len(ids))[None], row_ids[i : i + 1]):
            torch.testing.assert_close(logits[0, -1], no_cache_logits(ids), atol=1e-5, rtol=0)
    # 3. batched greedy decode; every row crosses at least one block boundary
    for _ in range(6):
        next_ids = [int(no_cache_logits(ids).argmax()) for ids in rows]
        rows = [ids + [t] for ids, t in zip(rows, next_ids)]
        positions = torch.tensor([[len(ids) - 1] for ids in rows])
        paged_logits, slot_logits = both(torch.tensor([[t] for t in next_ids]), positions)
        for i, ids in enumerate(rows):
            expected = no_cache_logits(ids)
            torch.testing.assert_close(paged_logits[i, 0], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(slot_logits[i, 0], expected, atol=1e-5, rtol=0)
    assert all(len(ids) // block_size > (len(ids) - 6) // block_size for ids in rows)


@torch.inference_mode()
def test_one_forward_of_decodes_and_prefill_chunks_equals_each_row_alone():
    """Rows of 1 token (decodes) and of several (prefill chunks) in one right-padded forward:
    the model runs only real tokens, each group of equal-length rows in one attention call."""
    texts = ("hello there", "the cat sat on the mat", "a b", "one two three four five six", "x y z")
    rows = [TOKENIZER.encode(text) for text in texts]
    # tokens already in the cache: rows 0, 1 and 4 decode one token; rows 2 and 3 compute the
    # rest of their prompt, as many tokens each
    done = [len(rows[0]) - 1, len(rows[1]) - 1, 0, len(rows[3]) - len(rows[2]), len(rows[4]) - 1]
    paged = MODEL.make_paged_cache(max_rows=5, max_len=64, block_size=4, num_blocks=90)
    order = torch.randperm(90, generator=torch.Generator().manual_seed(1)).tolist()
    for row in range(5):
        paged.set_blocks(row, 0, order[row * 16 : (row + 1) * 16])
    slot = MODEL.make_cache(5, 64)
    for cache in (paged, slot):
        for row, (ids, n) in enumerate(zip(rows, done)):
            if n:
                MODEL(torch.tensor([ids[:n]]), torch.arange(n)[None], cache, torch.tensor([row]))
        width = max(len(ids) - n for ids, n in zip(rows, done))
        input_ids = torch.zeros(5, width, dtype=torch.long)
        positions = torch.full((5, width), -1)
        for row, (ids, n) in enumerate(zip(rows, done)):
            input_ids[row, : len(ids) - n] = torch.tensor(ids[n:])
            positions[row, : len(ids) - n] = torch.arange(n, len(ids))
        write = cache.writer(torch.arange(5), positions)
        assert [group.shape for group in write.groups] == [(3, 1), (2, len(rows[2]))]
        logits = MODEL.compute_logits(MODEL(input_ids, positions, cache, torch.arange(5)))
        for row, (ids, n) in enumerate(zip(rows, done)):
            torch.testing.assert_close(logits[row, len(ids) - n - 1], no_cache_logits(ids), atol=1e-5, rtol=0)
        assert logits[0, 1:].abs().sum() == logits[4, 1:].abs().sum() == 0  # padding outputs are zeros
        with pytest.raises(ValueError, match="padding"):
            cache.writer(torch.arange(2), torch.tensor([[-1, 3], [0, 1]]))


def test_second_chat_turn_reuses_the_first_turns_blocks():
    sampling = SamplingParams(temperature=0.0, max_tokens=24, logprobs=True, repetition_penalty=1.3)
    first = SYSTEM + prompt("what is up")
    engine = make_engine()
    answer = tokens_of(run_to_end(engine, {0: [("turn-1", first, sampling)]})["turn-1"])
    computed_in_turn_1 = len(first) + len(answer) - 1  # the last sampled token is never fed back
    stop = TOKENIZER.encode("<|im_end|>")
    second = first + [t for t in answer if t not in stop] + stop + TOKENIZER.encode("\n") + prompt("and then?")
    shared = next((i for i, (a, b) in enumerate(zip(first + answer, second)) if a != b), len(first + answer))
    reusable = min(shared, computed_in_turn_1) // 16 * 16
    assert reusable > len(first)  # part of the first answer is reused too

    before = engine.num_computed_tokens
    outputs = run_to_end(engine, {0: [("turn-2", second, sampling)]})["turn-2"]
    assert outputs[-1].cached_prompt_tokens == reusable
    decoded = outputs[-1].completion_tokens - 1
    assert engine.num_computed_tokens - before == len(second) - reusable + decoded
    assert_same_generation(outputs, generate_alone(second, sampling))


def test_fully_cached_prompt_still_computes_its_last_block():
    ids = (SYSTEM * 2)[:48]  # exactly three blocks
    sampling = replace(GREEDY, max_tokens=4)
    engine = make_engine()
    first = run_to_end(engine, {0: [("a", ids, sampling)]})["a"]
    again = run_to_end(engine, {0: [("b", ids, sampling)]})["b"]
    assert again[-1].cached_prompt_tokens == 32  # the last block is recomputed, never written while shared
    assert_same_generation(again, first)


def test_concurrent_requests_share_system_prompt_blocks_and_free_them():
    sampling = replace(SEEDED, max_tokens=8)
    prompts = {"a": SYSTEM + prompt("first question"), "b": SYSTEM + prompt("second one")}
    engine = make_engine()
    blocks = engine.scheduler.blocks
    engine.add_request("a", prompts["a"], sampling)
    streams = {"a": [], "b": []}
    for step in range(4):
        if step == 1:  # a's prompt is computed: b finds its blocks
            engine.add_request("b", prompts["b"], sampling)
        for output in engine.step():
            streams[output.request_id].append(output)
    a, b = engine.scheduler.find("a"), engine.scheduler.find("b")
    common = next(i for i, (x, y) in enumerate(zip(prompts["a"], prompts["b"])) if x != y)
    shared = common // 16
    assert shared >= len(SYSTEM) // 16 >= 2
    assert a.blocks.block_ids[:shared] == b.blocks.block_ids[:shared]
    assert all(blocks.ref_count(i) == 2 for i in a.blocks.block_ids[:shared])
    assert set(a.blocks.block_ids[shared:]).isdisjoint(b.blocks.block_ids)
    assert b.num_cached == shared * 16
    for rid, outputs in run_to_end(engine).items():
        streams[rid] += outputs
    for rid, ids in prompts.items():
        assert_same_generation(streams[rid], generate_alone(ids, sampling))
    assert all(blocks.ref_count(i) == 0 for i in range(blocks.num_blocks))
    assert blocks.num_free == blocks.num_blocks and engine.num_free_slots == 4
    assert blocks.num_cached > 0  # still findable for the next request


def test_abort_frees_blocks_at_once():
    engine = make_engine(max_slots=2)
    blocks = engine.scheduler.blocks
    engine.add_request("keep", prompt("keep going"), SamplingParams(temperature=0.0, max_tokens=6))
    engine.add_request("drop", SYSTEM + prompt("drop me"), SamplingParams(temperature=0.0, max_tokens=100))
    for _ in range(3):
        engine.step()
    kept = len(engine.scheduler.find("keep").blocks.block_ids)
    dropped = engine.scheduler.find("drop").blocks
    assert blocks.num_free == blocks.num_blocks - kept - len(dropped.block_ids)
    assert engine.abort("drop")
    assert blocks.num_free == blocks.num_blocks - kept and engine.num_free_slots == 1
    assert not dropped.block_ids
    assert [o.finish_reason for o in engine.step() if o.request_id == "drop"] == ["abort"]
    run_to_end(engine)
    assert blocks.num_free == blocks.num_blocks


def test_eviction_takes_the_least_recently_released_block_first():
    manager = BlockManager(num_blocks=4, block_size=2)

    def run(tokens: list[int]) -> int:
        """Admit, compute all but the last token, release; returns the cached token count."""
        table = BlockTable()
        cached = manager.admit(table, tokens)
        manager.commit(table, tokens, len(tokens) - 1)
        manager.release(table)
        return cached

    assert run([1, 2, 3, 4, 5]) == 0  # keeps blocks [1, 2] and [3, 4]
    assert run([7, 8, 9]) == 0  # keeps [7, 8]: four blocks, three cached
    assert manager.num_cached == 3 and manager.num_free == 4
    assert run([5, 5, 5]) == 0  # two fresh blocks: the never-cached one, then [3, 4] is evicted
    assert manager.num_cached == 3  # [1, 2], [7, 8] and the new [5, 5]
    assert run([1, 2, 3, 4, 5]) == 2  # its head survived, its tail did not; [7, 8] makes room now
    assert run([5, 5, 5]) == 2
    assert run([7, 8, 9]) == 0


def test_media_hash_keeps_equal_placeholders_apart():
    manager = BlockManager(num_blocks=12, block_size=2)
    tokens = [1, 2, 99, 99, 99, 99, 3, 4, 5]  # 99 = an image placeholder at positions 2..5

    def admit(image: str) -> int:
        table = BlockTable(media_spans=(MediaSpan(2, 6, image),))
        cached = manager.admit(table, tokens)
        manager.commit(table, tokens, len(tokens))
        manager.release(table)
        return cached

    assert admit("cat.png") == 0
    assert admit("dog.png") == 2  # only the block before the image is shared
    assert admit("cat.png") == 8  # the same image: every full block but the last token's
    table = BlockTable()  # no media given: placeholders alone never match an image's blocks
    assert manager.admit(table, tokens) == 2


def test_preemption_recomputes_and_gives_the_same_outputs():
    sampling = replace(SEEDED, max_tokens=20)
    prompts = {f"r{i}": prompt(text) for i, text in enumerate(["one two", "three four", "five six"])}
    params = {rid: replace(sampling, seed=i) for i, rid in enumerate(prompts)}
    # 14 blocks of 4 = 56 tokens for three requests of about 40 tokens each
    engine = make_engine(max_slots=3, kv_block_size=4, num_kv_blocks=14, prefill_chunk_tokens=16)
    streams = run_to_end(engine, {0: [(rid, ids, params[rid]) for rid, ids in prompts.items()]})
    assert engine.scheduler.num_preemptions > 0
    for rid, ids in prompts.items():
        assert_same_generation(streams[rid], generate_alone(ids, params[rid]))
    assert engine.scheduler.blocks.num_free == 14 and engine.num_free_slots == 3


def test_prompt_longer_than_the_cache_is_refused_up_front():
    engine = make_engine(kv_block_size=4, num_kv_blocks=4)  # 16 tokens, although the context is 256
    with pytest.raises(EngineError) as error:
        engine.add_request("long", prompt("x" * 20), GREEDY)
    assert error.value.code == "context_length_exceeded"
    engine.add_request("short", TOKENIZER.encode("hi"), SamplingParams(temperature=0.0))
    last = run_to_end(engine)["short"][-1]
    assert (last.prompt_tokens + last.completion_tokens, last.finish_reason) == (16, "length")
