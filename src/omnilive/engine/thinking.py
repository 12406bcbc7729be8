"""The thinking budget: whether the model is inside a think block, and what to force when.

A thinking model writes its reasoning between `<think>` and `</think>`. The budget counts the
tokens it *samples* inside a think block; when the count reaches the budget the engine
force-feeds a closing text (Qwen's own wording), and budget 0 closes every think block as soon
as it opens. A minimum extends thinking instead (budget forcing, as in the s1 paper): while the
model has sampled fewer thinking tokens than the minimum, a `</think>` it picks is replaced by
"Wait", and it thinks on. Forced tokens are appended as output without sampling.
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
        if forced:
            return "reasoning", ()
        self.sampled_inside += 1
        if self.budget is not None and self.sampled_inside == self.budget:
            return "reasoning", self.markers.budget_exhausted_ids
        return "reasoning", ()
