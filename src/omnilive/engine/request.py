"""The state of one generation request inside the engine, and what a step reports about it.

A request's tokens are `token_ids` = prompt + output. `num_computed` of them have their keys
and values in the request's KV cache blocks (`blocks`, read through block-table `row`
while it runs); the rest are computed by the next step(s) (a prefill
chunk when several are missing, a decode when one is), and the logits of the last one give
the next token. Forced tokens (thinking budget) are appended as output without sampling, so
they are computed like a short prefill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from omnilive.engine.block_manager import BlockTable
from omnilive.engine.detokenizer import Detokenizer, TextDeltas
from omnilive.engine.sampling import SamplingRow, TokenSample
from omnilive.types import FinishReason, SamplingParams, TokenLogprob

BUDGET_EXHAUSTED_TEXT = (
    "Considering the limited time by the user, I have to give the solution based on the thinking directly now.\n"
    "</think>\n\n"
)
NO_THINKING_TEXT = "\n\n</think>\n\n"  # closes a think block that was just opened (budget 0)


@dataclass(frozen=True)
class ThinkMarkers:
    """Token ids of a thinking model's `<think>` / `</think>` and the texts we may force."""

    start_id: int
    end_id: int
    budget_exhausted_ids: tuple[int, ...]  # BUDGET_EXHAUSTED_TEXT, tokenised
    no_thinking_ids: tuple[int, ...]  # NO_THINKING_TEXT, tokenised


Channel = Literal["content", "reasoning", "marker"]


class ThinkingTracker:
    """Knows whether the model is inside a think block and enforces the thinking budget.

    The budget counts the tokens the model *samples* inside a think block (not the markers,
    not forced tokens). When the count reaches the budget the engine force-feeds
    `budget_exhausted_ids`; budget 0 closes every think block as soon as it opens.
    """

    def __init__(self, markers: ThinkMarkers, budget: int | None, prompt_ids: list[int]):
        self.markers, self.budget = markers, budget
        last_start = max((i for i, t in enumerate(prompt_ids) if t == markers.start_id), default=-1)
        last_end = max((i for i, t in enumerate(prompt_ids) if t == markers.end_id), default=-1)
        self.inside = last_start > last_end  # the prompt opened a think block (QwQ/R1 templates)
        self.sampled_inside = 0

    def tokens_to_force_at_start(self) -> tuple[int, ...]:
        return self.markers.no_thinking_ids if self.inside and self.budget == 0 else ()

    def observe(self, token_id: int, forced: bool) -> tuple[Channel, tuple[int, ...]]:
        """Classify one new token; returns its channel and the tokens to force after it."""
        if token_id == self.markers.end_id and self.inside:
            self.inside = False
            return "marker", ()
        if token_id == self.markers.start_id and not self.inside:
            self.inside, self.sampled_inside = True, 0
            return "marker", (self.markers.no_thinking_ids if self.budget == 0 and not forced else ())
        if not self.inside:
            return "content", ()
        if forced:
            return "reasoning", ()
        self.sampled_inside += 1
        if self.budget is not None and self.sampled_inside == self.budget:
            return "reasoning", self.markers.budget_exhausted_ids
        return "reasoning", ()


@dataclass(frozen=True)
class LLMOutput:
    """What one engine step produced for one request (deltas since the previous output)."""

    request_id: str
    text: str = ""  # content delta
    reasoning: str = ""  # reasoning (inside <think>) delta
    logprobs: tuple[TokenLogprob, ...] = ()  # one per sampled content token
    token_ids: tuple[int, ...] = ()  # new output tokens (sampled and forced)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far, reasoning included
    reasoning_tokens: int = 0  # total so far: tokens inside think blocks, markers included
    cached_prompt_tokens: int = 0  # prompt tokens whose KV was reused, not recomputed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)  # identity: requests are compared by `is`, never by value
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int  # max_tokens, or what the context leaves
    stop_token_ids: frozenset[int]  # EOS and extra stop ids: finish "stop", not shown as text
    detokenizer: Detokenizer
    generator: torch.Generator
    token_text: Callable[[int], tuple[str, bytes]]  # for logprobs
    thinking: ThinkingTracker | None = None
    token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int | None = None  # prompt tokens found in the cache at (first) admission
    row: int | None = None  # the cache's block-table row while running
    blocks: BlockTable = field(default_factory=BlockTable)
    reasoning_tokens: int = 0
    finish_reason: FinishReason | None = None
    # what this step produced, handed out (and reset) by take_output()
    _deltas: TextDeltas = field(default_factory=TextDeltas)
    _logprobs: list[TokenLogprob] = field(default_factory=list)
    _new_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def sampling_row(self) -> SamplingRow:
        return SamplingRow(self.sampling, self.generator, self.token_ids)

    def force_at_start(self) -> None:
        if self.thinking is not None:
            self._append_forced(self.thinking.tokens_to_force_at_start())

    def append_sampled(self, sample: TokenSample) -> None:
        """Add the token drawn from the logits after our last token, then any forced ones."""
        forced = self._append(sample.token_id, sample, forced=False)
        self._append_forced(forced)

    def finish(self, reason: FinishReason) -> None:
        if self.finished:
            return
        self.finish_reason = reason
        if reason != "abort":
            self._deltas += self.detokenizer.finish()

    def take_output(self) -> LLMOutput | None:
        """The step's deltas for this request, or None when there is nothing to report."""
        if not (self._new_token_ids or self.finished):
            return None
        output = LLMOutput(
            request_id=self.request_id,
            text=self._deltas.content,
            reasoning=self._deltas.reasoning,
            logprobs=tuple(self._logprobs),
            token_ids=tuple(self._new_token_ids),
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.num_output,
            reasoning_tokens=self.reasoning_tokens,
            cached_prompt_tokens=self.num_cached or 0,
        )
        self._deltas, self._logprobs, self._new_token_ids = TextDeltas(), [], []
        return output

    def _append_forced(self, token_ids: tuple[int, ...]) -> None:
        for token_id in token_ids:
            if self.finished:
                return
            self._append(token_id, None, forced=True)

    def _append(self, token_id: int, sample: TokenSample | None, forced: bool) -> tuple[int, ...]:
        self.token_ids.append(token_id)
        self._new_token_ids.append(token_id)
        to_force: tuple[int, ...] = ()
        if token_id in self.stop_token_ids and not forced:
            self.finish("stop")
            return ()
        channel: Channel = "content"
        if self.thinking is not None:
            channel, to_force = self.thinking.observe(token_id, forced)
        if channel == "content":
            self._deltas += self.detokenizer.add_token(token_id, reasoning=False)
            if sample is not None and sample.logprob is not None:
                self._logprobs.append(self._token_logprob(token_id, sample))
        else:
            self.reasoning_tokens += 1
            if channel == "reasoning":
                self._deltas += self.detokenizer.add_token(token_id, reasoning=True)
            else:
                self._deltas += self.detokenizer.switch_channel(reasoning=self.thinking.inside)
        if self.detokenizer.stopped:
            self.finish("stop")
        elif self.num_output >= self.max_new_tokens:
            self.finish("length")
        return () if self.finished else to_force

    def _token_logprob(self, token_id: int, sample: TokenSample) -> TokenLogprob:
        text, data = self.token_text(token_id)
        top = []
        for alt_id, alt_logprob in sample.top:
            alt_text, alt_data = self.token_text(alt_id)
            top.append((alt_text, alt_logprob, tuple(alt_data)))
        return TokenLogprob(token=text, logprob=float(sample.logprob), bytes=tuple(data), top=tuple(top))
