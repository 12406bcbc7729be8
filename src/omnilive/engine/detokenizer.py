"""Incremental detokenisation: token ids → text deltas that are always whole UTF-8 characters.

Byte-level BPE splits one multi-byte character across tokens ("é" can be two tokens of one
byte each), so decoding token by token would emit broken characters. We decode each token's
raw bytes with an incremental UTF-8 decoder that holds back an incomplete trailing sequence
until the bytes that finish it arrive.

Stop strings: text that might be the start of a stop string is held back until it either
completes one (the stop string and everything after it are dropped, the request finishes
with reason "stop") or can no longer become one (it is released).

Two channels: text inside a `<think>` block is reasoning, the rest is content. Stop strings
only apply to content; the think markers themselves are not text on either channel.

A plain-text reasoner (no markers) starts on the reasoning channel and moves to content where
its answer phrase appears in the text: reasoning that could be the start of the phrase is held
back like a possible stop string; once the phrase is complete, the text before it is reasoning
and the phrase with what follows is content (reasoning + content = the whole reply's text).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self


class Utf8Stream:
    """Bytes in, complete characters out; invalid bytes become U+FFFD."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def take_over(self, other: Utf8Stream) -> None:
        """Continue `other`'s stream: its held partial character finishes here (the answer phrase
        can end in the middle of a token's bytes)."""
        self._decoder.setstate(other._decoder.getstate())
        other._decoder.reset()

    def flush(self) -> str:
        """End of stream: a dangling incomplete character becomes U+FFFD."""
        tail = self._decoder.decode(b"", final=True)
        self._decoder.reset()  # the stream may resume later (content after a think block)
        return tail


class StopStringMatcher:
    """Holds back text that could still turn into one of `stops`."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Returns the text that is safe to emit now. After a match, sets `stopped`."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        # Whatever was emitted before cannot be part of a stop string (we would have held it),
        # so searching the held text plus the new text finds every match.
        pending = self._held + text
        hits = [i for i in (pending.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return pending[: min(hits)]
        keep = self._longest_suffix_that_starts_a_stop(pending)
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """The stream ended without a stop string: release what was held."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_suffix_that_starts_a_stop(self, text: str) -> int:
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[len(text) - n :]):
                    longest = n
                    break
        return longest


class AnswerPhraseMatcher:
    """Splits reasoning text at the answer phrase, holding back what could still become it."""

    def __init__(self, phrase: str) -> None:
        self.phrase = phrase
        self._held = ""

    def push(self, text: str) -> tuple[str, str | None]:
        """(reasoning safe to emit now, the phrase and what follows it, or None before the phrase)."""
        pending = self._held + text
        at = pending.find(self.phrase)
        if at >= 0:
            self._held = ""
            return pending[:at], pending[at:]
        keep = next((n for n in range(min(len(self.phrase) - 1, len(pending)), 0, -1)
                     if self.phrase.startswith(pending[len(pending) - n :])), 0)
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], None

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@dataclass
class TextDeltas:
    content: str = ""
    reasoning: str = ""

    def __iadd__(self, other: TextDeltas) -> Self:
        self.content += other.content
        self.reasoning += other.reasoning
        return self


class Detokenizer:
    """Per-request: feeds each generated token into its channel and returns the text deltas."""

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Sequence[str] = (),
                 answer_phrase: str | None = None) -> None:
        """answer_phrase: a plain-text reasoner's; the reply starts on the reasoning channel."""
        self._token_bytes = token_bytes
        self._content = Utf8Stream()
        self._reasoning = Utf8Stream()
        self._stops = StopStringMatcher(stop)
        self._phrase = AnswerPhraseMatcher(answer_phrase) if answer_phrase else None
        self._last_channel_reasoning = self._phrase is not None
        self.answered = False  # the answer phrase was found: the rest is content

    @property
    def stopped(self) -> bool:
        """A stop string was found; nothing more will be emitted."""
        return self._stops.stopped

    def add_token(self, token_id: int, reasoning: bool) -> TextDeltas:
        deltas = TextDeltas()
        if reasoning != self._last_channel_reasoning:
            deltas += self._flush_channel(self._last_channel_reasoning)
            self._last_channel_reasoning = reasoning
        data = self._token_bytes(token_id)
        if reasoning and self._phrase is not None and not self.answered:
            deltas += self._split_at_phrase(self._reasoning.push(data))
        elif reasoning:
            deltas.reasoning += self._reasoning.push(data)
        else:
            deltas.content += self._stops.push(self._content.push(data))
        return deltas

    def switch_channel(self, reasoning: bool) -> TextDeltas:
        """A think marker went by: finish the characters of the channel being left."""
        if reasoning == self._last_channel_reasoning:
            return TextDeltas()
        deltas = self._flush_channel(self._last_channel_reasoning)
        self._last_channel_reasoning = reasoning
        return deltas

    def finish(self) -> TextDeltas:
        """The request ended: release held text and any dangling partial character."""
        held = self._phrase.flush() if self._phrase is not None else ""
        deltas = TextDeltas(reasoning=held + self._reasoning.flush())
        deltas.content = self._stops.push(self._content.flush()) + self._stops.flush()
        return deltas

    def _split_at_phrase(self, text: str) -> TextDeltas:
        reasoning, answer = self._phrase.push(text)
        if answer is None:
            return TextDeltas(reasoning=reasoning)
        self.answered, self._last_channel_reasoning = True, False
        self._content.take_over(self._reasoning)
        return TextDeltas(content=self._stops.push(answer), reasoning=reasoning)

    def _flush_channel(self, reasoning: bool) -> TextDeltas:
        if reasoning:
            held = self._phrase.flush() if self._phrase is not None else ""
            return TextDeltas(reasoning=held + self._reasoning.flush())
        # Leaving content for reasoning: a held stop-string prefix can no longer complete.
        return TextDeltas(content=self._stops.push(self._content.flush()) + self._stops.flush())
