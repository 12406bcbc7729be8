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

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Sequence[str] = ()) -> None:
        self._token_bytes = token_bytes
        self._content = Utf8Stream()
        self._reasoning = Utf8Stream()
        self._stops = StopStringMatcher(stop)
        self._last_channel_reasoning = False

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
        if reasoning:
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
        deltas = TextDeltas(reasoning=self._reasoning.flush())
        deltas.content = self._stops.push(self._content.flush()) + self._stops.flush()
        return deltas

    def _flush_channel(self, reasoning: bool) -> TextDeltas:
        if reasoning:
            return TextDeltas(reasoning=self._reasoning.flush())
        # Leaving content for reasoning: a held stop-string prefix can no longer complete.
        return TextDeltas(content=self._stops.push(self._content.flush()) + self._stops.flush())
