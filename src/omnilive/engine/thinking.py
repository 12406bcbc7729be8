"""The thinking budget: whether the model is inside a think block, and what to force when.

A thinking model writes its reasoning between `<think>` and `</think>`. The budget counts the
tokens it *samples* inside a think block; when the count reaches the budget the engine
force-feeds a closing text (Qwen's own wording), and budget 0 closes every think block as soon
as it opens. A minimum extends thinking instead (budget forcing, as in the s1 paper): while the
model has sampled fewer thinking tokens than the minimum, a `</think>` it picks is replaced by
"Wait", and it thinks on. Forced tokens are appended as output without sampling.

A model that reasons in plain text (QVQ-72B-Preview) has no markers: its reply starts inside
its reasoning, and the answer begins where it writes its answer phrase ("**Final Answer**").
The phrase is found in the decoded text (detokenizer.py `AnswerPhraseMatcher`, across token
boundaries); `PlainReasoningTracker` counts the sampled reasoning tokens and, at the budget,
forces "\n\n" + phrase + "\n\n". A minimum cannot be enforced there: the phrase is several
ordinary tokens, written before we know it is the phrase, so the engine refuses one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BUDGET_EXHAUSTED_TEXT = (
    "Considering the limited time by the user, I have to give the solution based on the thinking directly now.\n"
    "</think>\n\n"
)
NO_THINKING_TEXT = "\n\n</think>\n\n"  # closes a think block that was just opened (budget 0)
THINK_LONGER_TEXT = "\nWait"  # replaces an end of thinking that comes before the minimum
QVQ_ANSWER_PHRASE = "**Final Answer**"  # QVQ-72B-Preview ends its reasoning with it (Qwen's demos)


def forced_answer_text(phrase: str) -> str:
    """What the budget forces on a plain-text reasoner: its answer phrase as a heading of its own."""
    return f"\n\n{phrase}\n\n"


@dataclass(frozen=True)
class ThinkMarkers:
    """Token ids of a thinking model's `<think>` / `</think>` and the texts we may force."""

    start_id: int
    end_id: int
    budget_exhausted_ids: tuple[int, ...]  # BUDGET_EXHAUSTED_TEXT, tokenised
    no_thinking_ids: tuple[int, ...]  # NO_THINKING_TEXT, tokenised
    think_longer_ids: tuple[int, ...] = ()  # THINK_LONGER_TEXT, tokenised


Channel = Literal["content", "reasoning", "marker"]


class ThinkingTracker:
    """Knows whether the model is inside a think block and enforces the thinking budget.

    The budget counts the tokens the model *samples* inside a think block (not the markers,
    not forced tokens). When the count reaches the budget the engine force-feeds
    `budget_exhausted_ids`; budget 0 closes every think block as soon as it opens.
    """

    def __init__(self, markers: ThinkMarkers, budget: int | None, prompt_ids: list[int], minimum: int = 0):
        self.markers, self.budget, self.minimum = markers, budget, minimum
        last_start = max((i for i, t in enumerate(prompt_ids) if t == markers.start_id), default=-1)
        last_end = max((i for i, t in enumerate(prompt_ids) if t == markers.end_id), default=-1)
        self.inside = last_start > last_end  # the prompt opened a think block (QwQ/R1 templates)
        # the reply may still begin with <think>: not when the prompt opened one, nor when it
        # ends with a closed one (Qwen3's enable_thinking=false template)
        self.may_open = not self.inside and not (last_end >= 0 and last_end >= len(prompt_ids) - 4)
        self.sampled_inside = 0

    def tokens_to_force_at_start(self) -> tuple[int, ...]:
        return self.markers.no_thinking_ids if self.inside and self.budget == 0 else ()

    def instead_of(self, token_id: int) -> tuple[int, ...] | None:
        """The tokens to force in place of a sampled one (None: keep it): the end of a think
        block the model has not thought `minimum` tokens in yet becomes "Wait"."""
        if token_id == self.markers.end_id and self.inside and self.sampled_inside < self.minimum:
            return self.markers.think_longer_ids
        return None

    def observe(self, token_id: int, forced: bool) -> tuple[Channel, tuple[int, ...]]:
        """Classify one new token; returns its channel and the tokens to force after it."""
        self.may_open = False
        if token_id == self.markers.end_id and self.inside:
            self.inside = False
            return "marker", ()
        if token_id == self.markers.start_id and not self.inside:
            self.inside, self.sampled_inside = True, 0
            return "marker", (self.markers.no_thinking_ids if self.budget == 0 and not forced else ())
        if not self.inside:
            return "content", ()
        return _reasoning_token(self, forced, self.markers.budget_exhausted_ids)


@dataclass(frozen=True)
class AnswerPhrase:
    """A plain-text reasoner's answer phrase and, tokenised, the text the budget forces."""

    text: str
    forced_ids: tuple[int, ...]  # forced_answer_text(text), tokenised


class PlainReasoningTracker:
    """ThinkingTracker's counterpart for a model without think markers: the reply is reasoning
    until the detokenizer finds the answer phrase (`end_reasoning`), then content."""

    markers = None  # no think tokens: the grammar mask never needs one allowed
    may_open = False

    def __init__(self, phrase: AnswerPhrase, budget: int | None):
        self.phrase, self.budget = phrase, budget
        self.inside, self.sampled_inside = True, 0

    def tokens_to_force_at_start(self) -> tuple[int, ...]:
        return self.phrase.forced_ids if self.budget == 0 else ()

    def instead_of(self, token_id: int) -> tuple[int, ...] | None:
        return None  # nothing to replace: an early phrase is refused up front (no minimum)

    def observe(self, token_id: int, forced: bool) -> tuple[Channel, tuple[int, ...]]:
        if not self.inside:
            return "content", ()
        return _reasoning_token(self, forced, self.phrase.forced_ids)

    def end_reasoning(self) -> None:
        """The answer phrase went by (written or forced): what follows is the answer."""
        self.inside = False


def _reasoning_token(tracker: ThinkingTracker | PlainReasoningTracker, forced: bool,
                     closing: tuple[int, ...]) -> tuple[Channel, tuple[int, ...]]:
    """A token inside the reasoning: a sampled one counts toward the budget, and the one that
    reaches it is followed by the forced `closing` text."""
    if forced:
        return "reasoning", ()
    tracker.sampled_inside += 1
    if tracker.budget is not None and tracker.sampled_inside == tracker.budget:
        return "reasoning", closing
    return "reasoning", ()
