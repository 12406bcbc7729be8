"""Batched next-token sampling: logit bias → penalties → grammar mask → temperature → top-k →
top-p → draw.

Every step is a small function over a [B, V] float32 logits tensor with per-row parameters,
so one call serves a whole decode batch where each request has its own settings.

Reproducibility: each request owns a `torch.Generator`. A row's random draw uses only its own
generator (exponential-race sampling, one noise vector per row), so a seeded request yields
the same tokens whether it runs alone or batched with others.

Logprobs are reported from the *final* distribution the token was drawn from: after the
repetition penalty, temperature scaling and the top-k / top-p masks. Greedy rows (temperature
0) report the penalised distribution at temperature 1. A token removed by top-k / top-p has
probability 0; its logprob is reported as -9999.0 (OpenAI's convention) instead of -inf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omnilive.engine.grammar import apply_allowed
from omnilive.types import SamplingParams

MASKED_LOGPROB = -9999.0
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenSample:
    token_id: int
    logprob: float | None  # None unless the request asked for logprobs
    top: tuple[tuple[int, float], ...] = ()  # (token_id, logprob), most likely first


@dataclass
class SamplingRow:
    """What sampling needs to know about one request in the batch."""

    params: SamplingParams
    generator: torch.Generator
    seen_token_ids: Sequence[int]  # prompt + output so far, for the repetition penalty
    num_prompt: int = 0  # seen_token_ids[num_prompt:] is the output (presence / frequency penalties)
    allowed: torch.Tensor | None = None  # the grammar's bitmask of tokens that may come next


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()  # fresh non-deterministic seed
    else:
        generator.manual_seed(seed)
    return generator


def apply_repetition_penalty(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place. HF/CTRL rule: a seen token's positive logit is divided, a negative one multiplied."""
    for i, row in enumerate(rows):
        penalty = row.params.repetition_penalty
        if penalty == 1.0 or not row.seen_token_ids:
            continue
        seen = torch.tensor(sorted(set(row.seen_token_ids)), dtype=torch.long, device=logits.device)
        values = logits[i, seen]
        logits[i, seen] = torch.where(values > 0, values / penalty, values * penalty)


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place: OpenAI's logit_bias, added to the raw logits (-100 bans a token)."""
    vocab = logits.shape[-1]
    for i, row in enumerate(rows):
        for token_id, bias in row.params.logit_bias:
            if 0 <= token_id < vocab:
                logits[i, token_id] += bias


def apply_presence_frequency(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place, OpenAI's rule over the output so far: logit -= presence·[count > 0] + frequency·count."""
    for i, row in enumerate(rows):
        presence, frequency = row.params.presence_penalty, row.params.frequency_penalty
        output = row.seen_token_ids[row.num_prompt:]
        if (presence == 0 and frequency == 0) or not output:
            continue
        ids, counts = torch.tensor(list(output), dtype=torch.long).unique(return_counts=True)
        logits[i, ids] -= presence + frequency * counts.to(logits.dtype)


def apply_grammars(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place: -inf for the tokens a row's grammar forbids (rows without one are untouched)."""
    constrained = [i for i, row in enumerate(rows) if row.allowed is not None]
    if constrained:
        apply_allowed(logits, constrained, [rows[i].allowed for i in constrained])


def apply_temperature(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place. Greedy rows (temperature 0) are left at temperature 1 for their logprobs."""
    temperatures = [row.params.temperature if row.params.temperature > 0 else 1.0 for row in rows]
    if any(t != 1.0 for t in temperatures):
        logits /= torch.tensor(temperatures, dtype=logits.dtype, device=logits.device).unsqueeze(1)


def mask_top_k_top_p(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place: set to -inf every logit outside a row's top-k and outside its top-p nucleus."""
    vocab = logits.shape[-1]
    filtered = [
        i
        for i, row in enumerate(rows)
        if row.params.temperature > 0 and (0 < row.params.top_k < vocab or row.params.top_p < 1.0)
    ]
    if not filtered:
        return
    index = torch.tensor(filtered, dtype=torch.long, device=logits.device)
    sub = logits[index]  # [F, V]
    sorted_logits, order = sub.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)  # [1, V]
    top_k = torch.tensor(
        [rows[i].params.top_k if rows[i].params.top_k > 0 else vocab for i in filtered], device=logits.device
    ).unsqueeze(1)
    # top_p >= 1 means off: use 2.0 so float rounding in the cumulative sum can never drop a token.
    top_p = torch.tensor(
        [rows[i].params.top_p if rows[i].params.top_p < 1.0 else 2.0 for i in filtered],
        dtype=sub.dtype,
        device=logits.device,
    )
    remove = ranks >= top_k
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    sorted_probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove |= mass_before >= top_p.unsqueeze(1)
    remove[:, 0] = False
    sub = sub.scatter(1, order, sorted_logits.masked_fill(remove, float("-inf")))
    logits[index] = sub


def draw(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
    """Greedy rows take the argmax; the others an exponential race with their own generator.

    argmax(p / E) with E ~ Exp(1) i.i.d. picks token i with probability p_i (it is the Gumbel-max
    trick in another form), and it needs exactly one noise vector per row from that row's generator.
    """
    greedy = logits.argmax(dim=-1).tolist()
    tokens: list[int] = []
    for i, row in enumerate(rows):
        if row.params.temperature <= 0:
            tokens.append(int(greedy[i]))
            continue
        probs = logits[i].softmax(dim=-1)
        noise = torch.empty(probs.shape, dtype=torch.float32).exponential_(generator=row.generator)
        tokens.append(int((probs / noise.to(probs.device)).argmax()))
    return tokens


def logprobs_of(
    logits: torch.Tensor, tokens: Sequence[int], rows: Sequence[SamplingRow]
) -> list[tuple[float | None, tuple[tuple[int, float], ...]]]:
    """(logprob of the chosen token, top-n alternatives) per row, from the final distribution."""
    wanted = [i for i, row in enumerate(rows) if row.params.logprobs or row.params.top_logprobs > 0]
    results: list[tuple[float | None, tuple[tuple[int, float], ...]]] = [(None, ())] * len(rows)
    if not wanted:
        return results
    log_probs = logits[wanted].log_softmax(dim=-1).clamp_min(MASKED_LOGPROB)  # [W, V]
    for j, i in enumerate(wanted):
        chosen = float(log_probs[j, tokens[i]])
        top: tuple[tuple[int, float], ...] = ()
        n = min(rows[i].params.top_logprobs, MAX_TOP_LOGPROBS)
        if n > 0:
            values, ids = log_probs[j].topk(n)
            top = tuple((int(t), float(v)) for t, v in zip(ids.tolist(), values.tolist()))
        results[i] = (chosen, top)
    return results


def sample(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[TokenSample]:
    """logits: [B, V] for the B rows' next positions. Does not modify the caller's tensor."""
    assert logits.dim() == 2 and logits.shape[0] == len(rows), (logits.shape, len(rows))
    logits = logits.float().clone()
    apply_logit_bias(logits, rows)
    apply_repetition_penalty(logits, rows)
    apply_presence_frequency(logits, rows)
    apply_grammars(logits, rows)
    apply_temperature(logits, rows)
    mask_top_k_top_p(logits, rows)
    tokens = draw(logits, rows)
    scored = logprobs_of(logits, tokens, rows)
    return [TokenSample(token, logprob, top) for token, (logprob, top) in zip(tokens, scored)]
