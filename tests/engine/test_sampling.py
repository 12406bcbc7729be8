import math

import pytest
import torch

from omnilive.engine.sampling import MASKED_LOGPROB, SamplingRow, make_generator, sample
from omnilive.types import SamplingParams


def row(seed: int | None = 0, seen: tuple[int, ...] = (), **params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), make_generator(seed), list(seen))


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def test_greedy_takes_argmax_and_does_not_touch_input():
    logits = torch.randn(3, 50)
    before = logits.clone()
    samples = sample(logits, [row(temperature=0.0) for _ in range(3)])
    assert [s.token_id for s in samples] == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)
    assert all(s.logprob is None for s in samples)


def test_top_k_one_is_greedy_at_any_temperature():
    logits = torch.randn(4, 100)
    samples = sample(logits, [row(seed=i, temperature=1.5, top_k=1) for i in range(4)])
    assert [s.token_id for s in samples] == logits.argmax(-1).tolist()


def test_top_p_keeps_the_nucleus_and_renormalises_logprobs():
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    params = {"temperature": 1.0, "top_p": 0.7, "logprobs": True, "top_logprobs": 4}
    drawn = [sample(logits, [row(seed=s, **params)])[0] for s in range(300)]
    assert {d.token_id for d in drawn} == {0, 1}  # 0.5 < 0.7 needs the second, 0.8 >= 0.7 stops
    top = dict(drawn[0].top)
    assert top[0] == pytest.approx(math.log(0.5 / 0.8), abs=1e-5)
    assert top[1] == pytest.approx(math.log(0.3 / 0.8), abs=1e-5)
    assert top[2] == top[3] == MASKED_LOGPROB


def test_draw_frequencies_follow_the_distribution():
    probs = [0.6, 0.25, 0.1, 0.05]
    generator_row = row(seed=7, temperature=1.0)
    counts = [0] * 4
    for _ in range(4000):
        counts[sample(logits_of(probs), [generator_row])[0].token_id] += 1
    for count, p in zip(counts, probs):
        assert count / 4000 == pytest.approx(p, abs=0.03)


def test_temperature_sharpens_the_reported_distribution():
    logits = logits_of([0.5, 0.3, 0.2])
    cold = sample(logits, [row(temperature=0.5, logprobs=True, top_logprobs=3)])[0]
    expected = torch.tensor([0.5, 0.3, 0.2]).pow(2)
    expected = (expected / expected.sum()).log()
    assert [lp for _, lp in cold.top] == pytest.approx(expected.tolist(), abs=1e-5)


def test_repetition_penalty_applies_to_seen_tokens_only():
    logits = torch.tensor([[2.0, -1.0, 1.9, 0.0]])
    plain = sample(logits, [row(temperature=0.0)])[0]
    penalised = sample(
        logits, [row(temperature=0.0, seen=(0, 1), repetition_penalty=2.0, logprobs=True, top_logprobs=4)]
    )[0]
    assert plain.token_id == 0 and penalised.token_id == 2
    # seen: 2.0 → 1.0 (divided), -1.0 → -2.0 (multiplied); unseen unchanged
    expected = torch.tensor([1.0, -2.0, 1.9, 0.0]).log_softmax(-1)
    assert dict(penalised.top) == pytest.approx(dict(enumerate(expected.tolist())), abs=1e-5)


def test_seeded_row_gives_same_tokens_alone_or_batched():
    torch.manual_seed(0)
    steps = [torch.randn(5, 64) for _ in range(20)]
    params = {"temperature": 1.0, "top_p": 0.9, "top_k": 20}
    batch_rows = [row(seed=100 + i, **params) for i in range(5)]
    alone_row = row(seed=102, **params)
    batched = [sample(logits, batch_rows)[2].token_id for logits in steps]
    alone = [sample(logits[2:3], [alone_row])[0].token_id for logits in steps]
    assert batched == alone
    other_seed = row(seed=5, **params)
    assert alone != [sample(logits[2:3], [other_seed])[0].token_id for logits in steps]


def test_mixed_batch_each_row_keeps_its_own_settings():
    logits = torch.randn(3, 30)
    rows = [row(temperature=0.0), row(temperature=1.0, top_k=1), row(seed=3, temperature=1.0)]
    samples = sample(logits, rows)
    assert samples[0].token_id == int(logits[0].argmax())
    assert samples[1].token_id == int(logits[1].argmax())
    assert samples[2].token_id == sample(logits[2:3], [row(seed=3, temperature=1.0)])[0].token_id


def test_presence_and_frequency_penalties_count_the_output_only():
    logits = torch.tensor([[3.0, 2.5, 1.0, 0.0]])
    # token 0 once in the prompt, token 1 twice in the output
    seen_row = SamplingRow(SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25,
                                          logprobs=True, top_logprobs=4), make_generator(0), [0, 1, 1], num_prompt=1)
    got = sample(logits, [seen_row])[0]
    expected = torch.tensor([3.0, 2.5 - 0.5 - 2 * 0.25, 1.0, 0.0]).log_softmax(-1)
    assert got.token_id == 0
    assert dict(got.top) == pytest.approx(dict(enumerate(expected.tolist())), abs=1e-5)


def test_logit_bias_adds_to_the_raw_logits():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert sample(logits, [row(temperature=0.0, logit_bias=((0, -100.0),))])[0].token_id == 1
    assert sample(logits, [row(temperature=0.0, logit_bias=((2, 5.0), (99, 1.0)))])[0].token_id == 2


def test_grammar_mask_bans_other_tokens_in_its_row_only():
    logits = torch.tensor([[5.0, 1.0, 0.0, 4.0]] * 2)
    allowed = torch.tensor([(1 << 1) | (1 << 2)], dtype=torch.int32)  # tokens 1 and 2
    masked = SamplingRow(SamplingParams(temperature=1.0, logprobs=True), make_generator(3), [], allowed=allowed)
    for _ in range(20):
        free, bound = sample(logits, [row(temperature=0.0), masked])
        assert free.token_id == 0 and bound.token_id in (1, 2)
        assert bound.logprob > math.log(0.5) - 1 if bound.token_id == 1 else bound.logprob < math.log(0.5)
