"""LLMEngine on a tiny random-weight Qwen2 and a tiny byte-level BPE vocabulary.

The builders below are also used by test_async_engine.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from omnilive.engine.detokenizer import Detokenizer, StopStringMatcher
from omnilive.engine.llm_engine import LLMEngine
from omnilive.engine.request import RequestOutput
from omnilive.engine import llm_engine
from omnilive.engine.thinking import (
    BUDGET_EXHAUSTED_TEXT,
    NO_THINKING_TEXT,
    THINK_LONGER_TEXT,
    ThinkingTracker,
    ThinkMarkers,
)
from omnilive.types import EngineError, SamplingParams
from omnilive.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from omnilive.model.tokenizer import CONTROL, NORMAL, USER_DEFINED, Tokenizer, TokenizerInfo, build_bpe, byte_alphabet

torch.set_num_threads(1)

GREEDY = SamplingParams(temperature=0.0, logprobs=True)
SEEDED = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=1234, logprobs=True)
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r", "o n", "Ġ a", "r e", "a t", "e n", "Ġ s", "o u"]
SPECIALS = [("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL), ("<think>", USER_DEFINED), ("</think>", USER_DEFINED)]


def tiny_tokenizer() -> Tokenizer:
    """The real Tokenizer class over 256 byte tokens + a few merges + chat/think specials."""
    tokens = [byte_alphabet()[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]
    types = [NORMAL] * len(tokens)
    for text, kind in SPECIALS:
        tokens.append(text)
        types.append(kind)
    backend = build_bpe(tokens, MERGES, types, "qwen2")
    return Tokenizer(backend, TokenizerInfo(eos_token_id=tokens.index("<|im_end|>")))


def tiny_model(vocab_size: int, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return Qwen2ForCausalLM(config).eval()


TOKENIZER = tiny_tokenizer()
MODEL = tiny_model(TOKENIZER.vocab_size)
# The same vocabulary with no EOS or end-of-turn id: only a length limit can end a reply, so a
# check on what happens at that limit cannot be skipped by the random model stopping first.
NEVER_STOPS = Tokenizer(TOKENIZER.backend, TokenizerInfo())


def make_engine(tokenizer: Tokenizer = TOKENIZER, **options) -> LLMEngine:
    options = {"max_slots": 4, "context_length": 256, **options}
    return LLMEngine(MODEL, tokenizer, **options)


def prompt(text: str) -> list[int]:
    return TOKENIZER.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def run_to_end(engine: LLMEngine, arrivals: dict[int, list[tuple]] | None = None) -> dict[str, list[RequestOutput]]:
    """Step until idle; `arrivals` maps a step number to add_request argument tuples."""
    arrivals = arrivals or {}
    streams: dict[str, list[RequestOutput]] = {}
    step = 0
    while engine.has_work() or any(s >= step for s in arrivals):
        for args in arrivals.get(step, []):
            engine.add_request(*args)
        for output in engine.step():
            streams.setdefault(output.request_id, []).append(output)
        step += 1
    return streams


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def text_of(outputs: list[RequestOutput]) -> str:
    return "".join(o.text for o in outputs)


def assert_same_generation(got: list[RequestOutput], expected: list[RequestOutput]) -> None:
    """Same tokens, same text, and (when requested) the same logprobs up to float noise."""
    assert tokens_of(got) == tokens_of(expected)
    assert text_of(got) == text_of(expected)
    got_lp, expected_lp = ([lp.logprob for o in outputs for lp in o.logprobs] for outputs in (got, expected))
    assert got_lp == pytest.approx(expected_lp, abs=1e-4)


def generate_alone(prompt_ids: list[int], sampling: SamplingParams, **options) -> list[RequestOutput]:
    engine = make_engine(**options)
    engine.add_request("alone", prompt_ids, sampling)
    return run_to_end(engine)["alone"]


@torch.inference_mode()
def reference_greedy(prompt_ids: list[int], max_tokens: int, stop_token_ids=TOKENIZER.stop_token_ids) -> list[int]:
    """Token by token, recomputing the whole sequence each time (no cache reuse at all)."""
    ids = list(prompt_ids)
    for _ in range(max_tokens):
        cache = MODEL.make_cache(1, len(ids))
        hidden = MODEL(torch.tensor([ids]), torch.arange(len(ids))[None], cache, torch.tensor([0]))
        ids.append(int(MODEL.compute_logits(hidden[0, -1]).argmax()))
        if ids[-1] in stop_token_ids:
            break
    return ids[len(prompt_ids) :]


def test_greedy_equals_reference_loop():
    prompt_ids = prompt("the cat sat on the mat")
    outputs = generate_alone(prompt_ids, SamplingParams(temperature=0.0, max_tokens=24))
    assert tokens_of(outputs) == reference_greedy(prompt_ids, 24)
    assert outputs[-1].finish_reason in ("length", "stop")
    assert outputs[-1].prompt_tokens == len(prompt_ids)
    assert outputs[-1].completion_tokens == len(tokens_of(outputs))


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_batched_with_staggered_arrival_equals_each_alone(sampling):
    sampling = replace(sampling, max_tokens=20)
    prompts = {f"r{i}": prompt(text) for i, text in enumerate(["hello", "one two three four", "é ü 世界", "a"])}
    engine = make_engine(prefill_chunk_tokens=16)
    params = {rid: replace(sampling, seed=i if sampling.seed is not None else None) for i, rid in enumerate(prompts)}
    arrivals = {i * 3: [(rid, ids, params[rid])] for i, (rid, ids) in enumerate(prompts.items())}
    batched = run_to_end(engine, arrivals)
    for rid, ids in prompts.items():
        assert_same_generation(batched[rid], generate_alone(ids, params[rid]))
    assert engine.num_free_slots == 4


def test_each_step_runs_one_forward_for_its_decodes_and_prefill_chunks():
    """A request arriving while others decode joins their forward: the weights are read once
    per step, whatever mix of decodes and prefill chunks it holds."""
    engine = make_engine(prefill_chunk_tokens=8)
    forwards = []
    hook = MODEL.register_forward_pre_hook(lambda module, args: forwards.append(tuple(args[1].shape)))
    try:
        arrivals = {i * 2: [(f"r{i}", prompt(text), replace(GREEDY, max_tokens=10))]
                    for i, text in enumerate(["hello", "one two three four", "a"])}
        batched = run_to_end(engine, arrivals)
    finally:
        hook.remove()
    assert len(forwards) == engine.steps_run
    assert any(rows > 1 and width > 1 for rows, width in forwards)  # decodes and a chunk together
    for i, text in enumerate(["hello", "one two three four", "a"]):
        assert_same_generation(batched[f"r{i}"], generate_alone(prompt(text), replace(GREEDY, max_tokens=10)))


def test_chunked_prefill_equals_whole_prefill():
    prompt_ids = prompt("a long prompt " * 6)
    sampling = SamplingParams(temperature=0.0, max_tokens=12, logprobs=True)
    whole = generate_alone(prompt_ids, sampling, prefill_chunk_tokens=1024)
    chunked = generate_alone(prompt_ids, sampling, prefill_chunk_tokens=7)
    assert len(prompt_ids) > 3 * 7
    assert_same_generation(chunked, whole)


def test_stop_string_split_across_tokens_is_trimmed():
    prompt_ids = prompt("stop here")
    varied = SamplingParams(temperature=0.0, max_tokens=30, repetition_penalty=1.5)  # the tiny model loops otherwise
    reference = generate_alone(prompt_ids, varied)
    tokens, full = tokens_of(reference), text_of(reference)
    # a stop string made of the last character of one token and the first of the next
    for i in range(1, len(tokens)):
        left, right = (TOKENIZER.decode([t]) for t in tokens[i - 1 : i + 1])
        before = TOKENIZER.decode(tokens[:i], skip_special_tokens=True)
        stop = left[-1:] + right[:1]
        if len(stop) == 2 and stop.isascii() and stop.isprintable() and full.find(stop) == len(before) - 1:
            break
    else:
        pytest.fail(f"no usable token boundary in {full!r}")
    outputs = generate_alone(prompt_ids, replace(varied, stop=(stop,)))
    assert text_of(outputs) == before[:-1]
    assert outputs[-1].finish_reason == "stop"


def test_stop_token_id_ends_without_text():
    prompt_ids = prompt("end early")
    reference = reference_greedy(prompt_ids, 10)
    stop_id = reference[5]
    first = reference.index(stop_id)
    engine = make_engine()
    engine.add_request("r", prompt_ids, SamplingParams(temperature=0.0, max_tokens=10), None, [stop_id])
    outputs = run_to_end(engine)["r"]
    assert tokens_of(outputs) == reference[: first + 1]
    assert text_of(outputs) == TOKENIZER.decode(reference[:first])
    assert outputs[-1].finish_reason == "stop"


def test_max_tokens_and_context_limit():
    outputs = generate_alone(prompt("count"), SamplingParams(temperature=0.0, max_tokens=5))
    assert (outputs[-1].completion_tokens, outputs[-1].finish_reason) == (5, "length")
    engine = make_engine(NEVER_STOPS, context_length=40)
    prompt_ids = prompt("x" * 20)
    engine.add_request("r", prompt_ids, SamplingParams(temperature=0.0))  # no max_tokens: the context is the limit
    last = run_to_end(engine)["r"][-1]
    assert (last.prompt_tokens + last.completion_tokens, last.finish_reason) == (40, "length")
    with pytest.raises(EngineError) as error:
        engine.add_request("too-long", list(range(40)), GREEDY)
    assert error.value.code == "context_length_exceeded"


def test_abort_frees_slot_and_reports_abort():
    engine = make_engine(max_slots=2)
    engine.add_request("keep", prompt("first"), SamplingParams(temperature=0.0, max_tokens=12))
    engine.add_request("drop", prompt("second"), SamplingParams(temperature=0.0, max_tokens=200))
    for _ in range(3):
        engine.step()
    assert engine.num_free_slots == 0
    assert engine.abort("drop")
    assert engine.num_free_slots == 1
    outputs = engine.step()
    assert [o.finish_reason for o in outputs if o.request_id == "drop"] == ["abort"]
    rest = run_to_end(engine)
    assert "drop" not in rest and rest["keep"][-1].finished
    assert not engine.abort("drop") and engine.num_free_slots == 2


def test_prefix_reuse_gives_identical_outputs():
    system = "<|im_start|>system\nYou are a helpful assistant who answers in short sentences.<|im_end|>\n"
    first, second = (TOKENIZER.encode(system) + prompt(q) for q in ("what is up", "tell me more"))
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    reusable = shared // 16 * 16  # whole blocks of the default block size
    assert reusable >= 32
    sampling = SamplingParams(temperature=0.0, max_tokens=10, logprobs=True, repetition_penalty=1.3)
    engine = make_engine()
    run_to_end(engine, {0: [("a", first, sampling)]})
    reused = run_to_end(engine, {0: [("b", second, sampling)]})["b"]
    assert reused[-1].cached_prompt_tokens == reusable
    assert_same_generation(reused, generate_alone(second, sampling))
    # the shared prefix can also come from a request that is still running (shared blocks)
    engine = make_engine()
    both = run_to_end(engine, {0: [("a", first, sampling)], 2: [("b", second, sampling)]})
    assert both["b"][-1].cached_prompt_tokens == reusable
    assert_same_generation(both["b"], reused)


def test_logprobs_come_from_the_sampled_distribution():
    prompt_ids = prompt("logprobs")
    outputs = generate_alone(prompt_ids, SamplingParams(temperature=0.0, max_tokens=3, logprobs=True, top_logprobs=3))
    first = next(o for o in outputs if o.logprobs).logprobs[0]
    with torch.inference_mode():
        hidden = MODEL(
            torch.tensor([prompt_ids]), torch.arange(len(prompt_ids))[None], MODEL.make_cache(1, 64), torch.tensor([0])
        )
        expected = MODEL.compute_logits(hidden[0, -1]).log_softmax(-1)
    assert first.logprob == pytest.approx(float(expected.max()), abs=1e-5)
    assert [t[1] for t in first.top] == pytest.approx(expected.topk(3).values.tolist(), abs=1e-5)
    assert bytes(first.bytes) == TOKENIZER.token_bytes(tokens_of(outputs)[0])
    assert first.top[0][0] == first.token == bytes(first.bytes).decode(errors="replace")


def think_engine(tokenizer: Tokenizer = TOKENIZER) -> tuple[LLMEngine, list[int], int]:
    """An engine whose vocabulary names <think>/</think>, and a prompt ending inside <think>."""
    engine = make_engine(tokenizer)
    assert engine.think_markers is not None
    prompt_ids = prompt("think first") + TOKENIZER.encode("<think>\n")
    return engine, prompt_ids, engine.think_markers.end_id


@pytest.mark.parametrize("budget", [1, 6])
def test_thinking_budget_is_exact(budget):
    engine, prompt_ids, end_id = think_engine(NEVER_STOPS)  # so the answer after the forced text is there
    free_run = reference_greedy(prompt_ids, budget, stop_token_ids=())
    assert end_id not in free_run, "the tiny model closed its think block itself; pick another seed"
    forced = list(TOKENIZER.encode(BUDGET_EXHAUSTED_TEXT))
    answer_tokens = 4
    max_tokens = budget + len(forced) + answer_tokens
    engine.add_request("r", prompt_ids, SamplingParams(temperature=0.0, max_tokens=max_tokens), budget)
    outputs = run_to_end(engine)["r"]
    tokens = tokens_of(outputs)
    assert (len(tokens), outputs[-1].finish_reason) == (max_tokens, "length")
    assert tokens[:budget] == free_run
    assert tokens[budget : budget + len(forced)] == forced
    reasoning = "".join(o.reasoning for o in outputs)
    assert reasoning == TOKENIZER.decode(free_run[:budget]) + BUDGET_EXHAUSTED_TEXT.split("</think>")[0]
    assert outputs[-1].reasoning_tokens == budget + forced.index(end_id) + 1
    # after the forced end of thinking the model answers as it would after that text
    answer_start = budget + len(forced)
    assert tokens[answer_start] == reference_greedy(prompt_ids + tokens[:answer_start], 1, stop_token_ids=())[0]
    assert text_of(outputs).startswith("\n\n")


def test_requests_with_different_budgets_in_one_batch_each_get_their_own():
    engine, prompt_ids, end_id = think_engine(NEVER_STOPS)
    forced = list(TOKENIZER.encode(BUDGET_EXHAUSTED_TEXT))
    budgets = {"none": None, "zero": 0, "two": 2, "seven": 7}
    sampling = SamplingParams(temperature=0.0, max_tokens=7 + len(forced) + 3)
    together = run_to_end(engine, {0: [(name, prompt_ids, sampling, budget) for name, budget in budgets.items()]})
    assert engine.steps_run < sum(len(tokens_of(outputs)) for outputs in together.values())  # batched
    for name, budget in budgets.items():
        alone = think_engine(NEVER_STOPS)[0]
        alone.add_request(name, prompt_ids, sampling, budget)
        assert tokens_of(together[name]) == tokens_of(run_to_end(alone)[name])
    assert end_id not in tokens_of(together["none"])  # no budget: it thinks to the end
    for name in ("two", "seven"):
        tokens = tokens_of(together[name])
        assert tokens[budgets[name]: budgets[name] + len(forced)] == forced
        assert together[name][-1].reasoning_tokens == budgets[name] + forced.index(end_id) + 1


def test_thinking_budget_zero_closes_think_right_away():
    engine, prompt_ids, _ = think_engine()
    engine.add_request("r", prompt_ids, SamplingParams(temperature=0.0, max_tokens=20), 0)
    outputs = run_to_end(engine)["r"]
    closing = TOKENIZER.encode(NO_THINKING_TEXT)
    assert tokens_of(outputs)[: len(closing)] == closing
    assert "".join(o.reasoning for o in outputs) == "\n\n"
    # max_tokens can end the request inside the forced text, before any model step
    engine.add_request("short", prompt_ids, SamplingParams(temperature=0.0, max_tokens=1), 0)
    (only,) = engine.step()
    assert (only.token_ids, only.finish_reason) == (tuple(closing[:1]), "length")
    assert not engine.has_work() and engine.num_free_slots == 4


def test_min_thinking_tokens_turns_an_early_end_of_thinking_into_wait(monkeypatch):
    """The model picks </think> after 1 thinking token (forced here at the sampler, where the
    model's choice lands): below the minimum of 4 it becomes "Wait" and thinking goes on; at
    sampling step 5, with 4 tokens thought, the same choice ends the think block."""
    engine, prompt_ids, end_id = think_engine(NEVER_STOPS)
    real_sample, steps = llm_engine.sample, []

    def model_tries_to_stop(logits, rows):
        samples = real_sample(logits, rows)
        steps.append(None)
        if len(steps) in (2, 6):  # sampling steps 1 and 5
            samples[0] = replace(samples[0], token_id=end_id)
        return samples

    monkeypatch.setattr(llm_engine, "sample", model_tries_to_stop)
    engine.add_request("r", prompt_ids, SamplingParams(temperature=0.0, max_tokens=16), min_thinking_tokens=4)
    outputs = run_to_end(engine)["r"]
    tokens, wait = tokens_of(outputs), list(TOKENIZER.encode(THINK_LONGER_TEXT))
    assert tokens[1 : 1 + len(wait)] == wait and end_id not in tokens[: 4 + len(wait)]
    assert tokens[4 + len(wait)] == end_id  # four thinking tokens sampled: now it may stop
    assert outputs[-1].reasoning_tokens == 4 + len(wait) + 1
    assert "Wait" in "".join(o.reasoning for o in outputs) and text_of(outputs)
    with pytest.raises(EngineError) as error:
        engine.add_request("bad", prompt_ids, SamplingParams(max_tokens=8), 2, min_thinking_tokens=3)
    assert error.value.param == "min_thinking_tokens"


def test_thinking_tracker_when_the_model_opens_the_think_block():
    markers = ThinkMarkers(start_id=1, end_id=2, budget_exhausted_ids=(9, 2), no_thinking_ids=(8, 2))
    tracker = ThinkingTracker(markers, budget=0, prompt_ids=[5, 6])
    assert not tracker.inside and tracker.tokens_to_force_at_start() == ()
    assert tracker.observe(1, forced=False) == ("marker", (8, 2))
    tracker = ThinkingTracker(markers, budget=2, prompt_ids=[5, 1, 2])  # a closed think block
    assert not tracker.inside
    assert [tracker.observe(t, forced=False) for t in (7, 1, 7, 7)] == [
        ("content", ()),
        ("marker", ()),
        ("reasoning", ()),
        ("reasoning", (9, 2)),
    ]
    assert tracker.observe(9, forced=True) == ("reasoning", ())
    assert tracker.observe(2, forced=True) == ("marker", ()) and not tracker.inside


def test_detokenizer_never_emits_broken_utf8():
    text = "héllo 世界 🙂!"
    ids = TOKENIZER.encode(text)
    assert len(ids) > len(text)  # multi-byte characters are split over byte tokens
    detokenizer = Detokenizer(TOKENIZER.token_bytes)
    deltas = [detokenizer.add_token(t, reasoning=False).content for t in ids]
    assert "".join(deltas) + detokenizer.finish().content == text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # a token ending mid-character produced no text yet


def test_add_request_errors():
    engine = make_engine()
    engine.add_request("same", prompt("x"), GREEDY)
    with pytest.raises(EngineError):
        engine.add_request("same", prompt("y"), GREEDY)
    with pytest.raises(EngineError):
        engine.add_request("empty", [], GREEDY)
    with pytest.raises(EngineError):
        engine.add_request("zero", prompt("x"), SamplingParams(max_tokens=0))


def test_stop_matcher_holds_back_a_possible_stop_and_releases_it():
    matcher = StopStringMatcher(["END", "\n\n"])
    assert matcher.push("abc E") == "abc "  # "E" may start "END"
    assert matcher.push("N") == ""
    assert matcher.push("x\n") == "ENx"  # "ENx" cannot; "\n" may start "\n\n"
    assert matcher.flush() == "\n" and not matcher.stopped
    matcher = StopStringMatcher(["END"])
    assert matcher.push("one E") == "one "
    assert matcher.push("ND two") == "" and matcher.stopped
    assert matcher.push("more") == "" and matcher.flush() == ""
