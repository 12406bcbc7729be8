"""The seam between the thinker and a speech stage that runs elsewhere (another process, another
machine): what the thinker gives a spoken request's talker, as plain data. The same for every
model that speaks:

    thinker engine (LLMEngine(export_speech=True))          speech engine (speech_engine.py)
      the model's thinker_states (FinalHiddenStates,
      LayerHiddenStates) keep states by block as in one
      process; each spoken request's ExportedSpeech
      records what its stream would have been told
          ──▶ RequestOutput.speech_feed ──▶ ... ──▶ SpeechEngine.feed ──▶ the model's stream
                                                    (SpeechStream, Qwen3SpeechStream) ──▶ AudioChunks

A `SpeechFeed` holds, for one request and in order, what the in-process stage hands its
stream: `start` (voice, seed, the prompt and the hidden states its talker reads) once the
prompt is in, each reply token's embedding (and hidden state, for a talker that reads it), the
reply text told, and the reply's end. Fed in the same order, a stream makes the same codes and
audio wherever it runs (the talker waits for its next text input; nothing depends on timing).
How feeds travel is the caller's business: the engine never imports a transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from omnilive.engine.request import Request
from omnilive.engine.speech_stage import Fail
from omnilive.model.qwen3_omni_talker import Qwen3Voice
from omnilive.model.thinker import ThinkerPrompt
from omnilive.model.token2wav import Voice
from omnilive.types import AudioChunk


@dataclass(frozen=True)
class SpeechStart:
    """A spoken request's prompt is in: what its talker's prefill needs besides reply token 0."""

    voice: Voice | Qwen3Voice
    seed: int | None
    prompt: ThinkerPrompt  # ids, embeddings and positions only: a talker reads no DeepStack rows
    prompt_hidden: torch.Tensor  # [T, H] the prompt's states the talker reads (Qwen3-Omni: a middle layer's)


@dataclass(frozen=True)
class SpeechFeed:
    """What one request's thinker gave its speech since the previous feed, in order: the start,
    reply tokens fed back (embeddings [n, H], and their hidden states [n, H] for a talker that
    reads them), text told, the end."""

    start: SpeechStart | None = None
    reply_hidden: torch.Tensor | None = None
    reply_embeds: torch.Tensor | None = None
    text: str = ""
    ended: bool = False

    def to(self, device: torch.device | str) -> SpeechFeed:
        """Its tensors on `device`: CPU to cross processes, the talker's device on arrival."""
        start = self.start
        if start is not None:
            prompt = start.prompt
            prompt = replace(prompt, input_ids=prompt.input_ids.to(device), embeds=prompt.embeds.to(device),
                             rope=replace(prompt.rope, positions=prompt.rope.positions.to(device)))
            start = SpeechStart(start.voice.to(device), start.seed, prompt, start.prompt_hidden.to(device))
        moved = [None if t is None else t.to(device) for t in (self.reply_hidden, self.reply_embeds)]
        return replace(self, start=start, reply_hidden=moved[0], reply_embeds=moved[1])

    @property
    def reply_tokens(self) -> int:
        return 0 if self.reply_embeds is None else len(self.reply_embeds)

    def reply_token(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Reply token i's (hidden state or None, embedding): a stream's `add_reply_token` arguments."""
        return None if self.reply_hidden is None else self.reply_hidden[i], self.reply_embeds[i]

    def then(self, later: SpeechFeed) -> SpeechFeed:
        """This feed followed by a later one, as one."""
        hidden, embeds = self.reply_hidden, self.reply_embeds
        if later.reply_embeds is not None:
            hidden = later.reply_hidden if hidden is None else torch.cat([hidden, later.reply_hidden])
            embeds = later.reply_embeds if embeds is None else torch.cat([embeds, later.reply_embeds])
        return SpeechFeed(self.start or later.start, hidden, embeds, self.text + later.text,
                          self.ended or later.ended)


def joined_feeds(feeds: list[SpeechFeed | None]) -> SpeechFeed | None:
    kept = [feed for feed in feeds if feed is not None]
    if not kept:
        return None
    joined = kept[0]
    for feed in kept[1:]:
        joined = joined.then(feed)
    return joined


@dataclass
class ExportedSpeech:
    """Stands in for a model's speech stream on the thinker: records what it is told, as a SpeechFeed."""

    voice: Voice | Qwen3Voice
    seed: int | None
    _start: SpeechStart | None = None
    _hidden: list[torch.Tensor] = field(default_factory=list)  # empty for a talker that reads none
    _embeds: list[torch.Tensor] = field(default_factory=list)
    _text: str = ""
    _ended: bool = False
    _sent_end: bool = False

    def start(self, prompt: ThinkerPrompt, prompt_hidden: torch.Tensor) -> None:
        talker_prompt = ThinkerPrompt(prompt.input_ids, prompt.embeds, prompt.rope)  # no DeepStack rows
        self._start = SpeechStart(self.voice, self.seed, talker_prompt, prompt_hidden)

    def add_reply_token(self, hidden: torch.Tensor | None, embed: torch.Tensor) -> None:
        if hidden is not None:
            self._hidden.append(hidden)
        self._embeds.append(embed)

    def tell(self, text: str) -> None:
        self._text += text

    def finish_text(self) -> None:
        self._ended = True

    def take(self) -> SpeechFeed | None:
        """What was recorded since the last take (None: nothing)."""
        if not (self._start or self._embeds or self._text or (self._ended and not self._sent_end)):
            return None
        feed = SpeechFeed(self._start, torch.stack(self._hidden) if self._hidden else None,
                          torch.stack(self._embeds) if self._embeds else None, self._text, self._ended)
        self._start, self._hidden, self._embeds, self._text = None, [], [], ""
        self._sent_end = self._ended
        return feed


class SpeechExport:
    """The talker's side of a thinker engine whose speech runs elsewhere: each spoken request's
    stream is an ExportedSpeech (told by the model's thinker_states, as its own stream would
    be) and no talker runs here. The thinker's part of a request ends with its reply; the feed
    goes out with the request's outputs (LLMEngine._take_outputs)."""

    talker_cache = None  # spoken requests hold no talker row here

    def open(self, request: Request) -> None:
        request.speech = ExportedSpeech(request.voice, request.sampling.seed)

    def step(self, speaking: list[Request], fail: Fail) -> None:
        for request in speaking:
            if request.finished:
                request.speech_done = True  # the rest of its speech is the speech engine's


class SpeechService(Protocol):
    """A speech stage that runs elsewhere: speaks one request from its feeds, in order, while
    they come (engine/speech_engine.AsyncSpeech in one process; server/scale_out_stages.py
    over Ray). Closing the audio iterator early aborts that request's speech."""

    def speak(self, request_id: str, feeds: AsyncIterator[SpeechFeed]) -> AsyncIterator[AudioChunk]: ...
