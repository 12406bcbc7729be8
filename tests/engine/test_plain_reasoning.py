"""A model that reasons in plain text and answers after a phrase (QVQ-72B-Preview's "**Final
Answer**"), on the tiny random Qwen2 and byte-level vocabulary of test_llm_engine.py.

The random model never writes the phrase by itself, so every budget is reached; where a test
needs the model to write it, the sampler's choice is replaced (where the model's choice lands).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from omnilive.engine import llm_engine
from omnilive.engine.detokenizer import AnswerPhraseMatcher, Detokenizer
from omnilive.engine.request import RequestOutput
from omnilive.engine.thinking import QVQ_ANSWER_PHRASE, forced_answer_text
from omnilive.types import EngineError, SamplingParams
from tests.engine.test_llm_engine import NEVER_STOPS, TOKENIZER, make_engine, prompt, reference_greedy, run_to_end, \
    tokens_of

PHRASE = QVQ_ANSWER_PHRASE
FORCED = list(TOKENIZER.encode(forced_answer_text(PHRASE)))
PROMPT = prompt("what is in the picture?")


def plain_engine(**options):
    engine = make_engine(NEVER_STOPS, answer_phrase=PHRASE, **options)  # only max_tokens ends a reply
    assert engine.think_markers is None  # the answer phrase wins over the vocabulary's <think>
    return engine


def reasoning_of(outputs: list[RequestOutput]) -> str:
    return "".join(o.reasoning for o in outputs)


def content_of(outputs: list[RequestOutput]) -> str:
    return "".join(o.text for o in outputs)


def tokens_through_phrase(tokens: list[int]) -> int:
    """How many tokens it takes until the decoded reply contains the phrase."""
    return next(n for n in range(1, len(tokens) + 1) if PHRASE in TOKENIZER.decode(tokens[:n]))


def check_split(outputs: list[RequestOutput]) -> None:
    """Reasoning, then the phrase and the answer as content; together, the whole reply's text;
    reasoning_tokens count every token up to the one that completes the phrase."""
    tokens = tokens_of(outputs)
    reasoning, content = reasoning_of(outputs), content_of(outputs)
    assert reasoning + content == TOKENIZER.decode(tokens)
    assert content.startswith(PHRASE) and PHRASE not in reasoning
    assert outputs[-1].reasoning_tokens == tokens_through_phrase(tokens)


@pytest.mark.parametrize("budget", [1, 6])
def test_the_budget_forces_the_answer_phrase_and_the_model_answers_after_it(budget):
    engine = plain_engine()
    free_run = reference_greedy(PROMPT, budget, stop_token_ids=())
    max_tokens = budget + len(FORCED) + 4
    engine.add_request("r", PROMPT, SamplingParams(temperature=0.0, max_tokens=max_tokens), budget)
    outputs = run_to_end(engine)["r"]
    tokens = tokens_of(outputs)
    assert (len(tokens), outputs[-1].finish_reason) == (max_tokens, "length")
    assert tokens[:budget] == free_run and tokens[budget : budget + len(FORCED)] == FORCED
    check_split(outputs)
    assert reasoning_of(outputs) == TOKENIZER.decode(free_run) + "\n\n"  # the forced text up to the phrase
    assert budget < outputs[-1].reasoning_tokens <= budget + len(FORCED)
    answer_start = budget + len(FORCED)  # the model's own answer follows the forced heading
    assert tokens[answer_start:] == reference_greedy(PROMPT + tokens[:answer_start], 4, stop_token_ids=())
    assert content_of(outputs).startswith(forced_answer_text(PHRASE).lstrip("\n"))


def test_budget_zero_answers_at_once():
    engine = plain_engine()
    engine.add_request("r", PROMPT, SamplingParams(temperature=0.0, max_tokens=len(FORCED) + 3), 0)
    outputs = run_to_end(engine)["r"]
    assert tokens_of(outputs)[: len(FORCED)] == FORCED
    check_split(outputs)
    assert reasoning_of(outputs) == "\n\n"


def test_the_phrase_the_model_writes_itself_ends_its_reasoning(monkeypatch):
    """At sampling steps 3.. the model picks the phrase's tokens one by one: the reasoning ends
    there, across those token boundaries, and the budget (not reached) forces nothing."""
    engine = plain_engine()
    phrase_ids = TOKENIZER.encode(PHRASE)
    assert len(phrase_ids) > 3  # the phrase spans several tokens
    real_sample, steps = llm_engine.sample, []

    def model_writes_the_phrase(logits, rows):
        samples = real_sample(logits, rows)
        steps.append(None)
        at = len(steps) - 4  # steps[0] is the prompt's: sampling step 3 writes the phrase's first token
        if 0 <= at < len(phrase_ids):
            samples[0] = replace(samples[0], token_id=phrase_ids[at])
        return samples

    monkeypatch.setattr(llm_engine, "sample", model_writes_the_phrase)
    max_tokens = 3 + len(phrase_ids) + 12
    budget = 3 + len(phrase_ids) + 4  # the phrase's tokens are sampled reasoning tokens too
    engine.add_request("r", PROMPT, SamplingParams(temperature=0.0, max_tokens=max_tokens), budget)
    outputs = run_to_end(engine)["r"]
    tokens = tokens_of(outputs)
    assert tokens[3 : 3 + len(phrase_ids)] == phrase_ids and len(tokens) == max_tokens
    check_split(outputs)
    assert outputs[-1].reasoning_tokens == 3 + len(phrase_ids)
    # no reasoning delta showed a piece of the phrase (a possible start is held back)
    assert reasoning_of(outputs) == TOKENIZER.decode(tokens[:3])
    assert forced_answer_text(PHRASE) not in TOKENIZER.decode(tokens)  # nothing forced after the answer began


def test_requests_with_different_budgets_in_one_batch_each_get_their_own():
    budgets = {"none": None, "zero": 0, "two": 2, "seven": 7}
    sampling = SamplingParams(temperature=0.0, max_tokens=7 + len(FORCED) + 3)
    engine = plain_engine()
    together = run_to_end(engine, {0: [(name, PROMPT, sampling, budget) for name, budget in budgets.items()]})
    assert engine.steps_run < sum(len(tokens_of(outputs)) for outputs in together.values())  # batched
    for name, budget in budgets.items():
        alone = plain_engine()
        alone.add_request(name, PROMPT, sampling, budget)
        assert tokens_of(together[name]) == tokens_of(run_to_end(alone)[name])
    none = together["none"]  # no budget: it reasons to the end, all of it reasoning
    assert not content_of(none) and none[-1].reasoning_tokens == sampling.max_tokens
    for name in ("zero", "two", "seven"):
        tokens, budget = tokens_of(together[name]), budgets[name]
        assert tokens[budget : budget + len(FORCED)] == FORCED
        check_split(together[name])
        assert together[name][-1].reasoning_tokens <= budget + len(FORCED)


def test_min_thinking_tokens_is_refused_and_a_plain_engine_takes_no_minimum():
    engine = plain_engine()
    with pytest.raises(EngineError) as error:
        engine.add_request("r", PROMPT, SamplingParams(max_tokens=8), 6, min_thinking_tokens=2)
    assert error.value.param == "min_thinking_tokens" and PHRASE in str(error.value)
    assert not engine.has_work()


def test_a_stop_string_in_the_answer_ends_the_reply_but_not_in_the_reasoning():
    engine = plain_engine()
    reasoning_text = TOKENIZER.decode(reference_greedy(PROMPT, 4, stop_token_ids=()))
    stop = reasoning_text[1:3]  # text the reasoning has: stop strings apply to the answer only
    sampling = SamplingParams(temperature=0.0, max_tokens=4 + len(FORCED) + 2, stop=[stop, "Answer"])
    engine.add_request("r", PROMPT, sampling, 4)
    outputs = run_to_end(engine)["r"]
    assert reasoning_of(outputs) == reasoning_text + "\n\n"
    assert content_of(outputs) == "**Final " and outputs[-1].finish_reason == "stop"


def test_the_matcher_holds_a_possible_phrase_and_the_answer_keeps_a_split_character():
    matcher = AnswerPhraseMatcher(PHRASE)
    assert matcher.push("so x = 2 **") == ("so x = 2 ", None)
    assert matcher.push("Fin") == ("", None)
    assert matcher.push("e work") == ("**Fine work", None)  # it was not the phrase after all
    assert matcher.push("\n**Final Ans") == ("\n", None)
    assert matcher.push("wer**\n4") == ("", "**Final Answer**\n4")
    # token bytes cut through the phrase and through the "é" right after it
    chunks = [b"ab**Fin", b"al Answer**\xc3", b"\xa9 ok"]
    detokenizer = Detokenizer(lambda i: chunks[i], answer_phrase=PHRASE)
    deltas = [detokenizer.add_token(i, reasoning=not detokenizer.answered) for i in range(3)]
    assert [(d.reasoning, d.content) for d in deltas] == [("ab", ""), ("", "**Final Answer**"), ("", "é ok")]
    assert detokenizer.finish().content == ""
