"""The speech stage of the engine step: talker and streaming token2wav for every spoken request.

    after the forward  FinalHiddenStates.computed: every computed token's final thinker
                       hidden state goes into `hidden_cache`, beside its K/V in its block; a
                       spoken request's stream starts when its prompt is in (the talker's
                       prefill needs the hidden state of every prompt token, cached ones
                       included) and gets each reply token fed back (hidden state + embedding)
    SpeechStage.step   ONE talker decode forward for every stream whose text input is there;
                       each code into that request's own StreamingToken2Wav; the token2wav
                       windows those codes completed wait until one is urgent (below), then
                       are solved ──▶ each stream's vocoder ──▶ AudioChunks on the request

The two halves are apart so that the talker's side can run elsewhere (`--stages`): there
the thinker's states come as feeds (engine/speech_export.py, engine/speech_engine.py).

Keeping the hidden states by block (~1/9 of the KV bytes at real sizes) lets a spoken request
reuse cached prompt blocks like any other: the next turn of a voice chat computes only what
was added.

Speech windows wait to be batched: a stream's next window is urgent when nothing of the reply
has been heard yet, when its speech has ended, or when less than `speech_lead_s` of audio is
ahead of where its listener is (the time since its first chunk). On a GPU a batched solve
costs about what one window does, so every waiting window is solved at once. On a CPU the DiT
is compute-bound: a solve of N windows takes N times as long and would hold every stream (and
the step loop) back, so each step solves one window (`windows_per_step`), that of the stream
not heard yet or with the least audio ahead, and the thinker and talker step in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from omnilive.engine.request import Request
from omnilive.engine.speech import SpeechSettings, SpeechStream
from omnilive.engine.talker_generate import talker_step
from omnilive.model.kv_cache import KVCache
from omnilive.model.talker import Talker
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.model.token2wav_stream import DiTWindow, solve_windows, window_batches

log = logging.getLogger(__name__)

Fail = Callable[[Request, BaseException], None]


class FinalHiddenStates:
    """The thinker's side of Qwen2.5-Omni's speech: every computed token's final hidden state,
    kept in `hidden_cache` beside its K/V in its block, told to each spoken request's stream (a
    SpeechStream here, or an ExportedSpeech when the talker runs elsewhere: speech_export.py)."""

    def __init__(self, thinker_embed: torch.nn.Embedding, kv_positions: int):
        """kv_positions: the thinker cache's blocks × block size (one kept hidden state each)."""
        self.thinker_embed = thinker_embed
        weight = thinker_embed.weight
        self.hidden_cache = torch.zeros(kv_positions, weight.shape[1], dtype=weight.dtype, device=weight.device)

    def computed(self, request: Request, start: int, end: int, hidden: torch.Tensor, block_size: int) -> None:
        """The request's tokens start..end-1 ran through the thinker; their final hidden states [n, H]."""
        rows = self._rows(request, range(start, end), block_size)
        self.hidden_cache.index_copy_(0, rows, hidden.to(self.hidden_cache.dtype))
        speech = request.speech
        if speech is None:
            return
        prompt_length = len(request.prompt_ids)
        if start < prompt_length <= end:  # the prompt is in: the cached prefix's states, then the computed ones
            prompt_rows = self._rows(request, range(prompt_length), block_size)
            speech.start(request.prepared, self.hidden_cache.index_select(0, prompt_rows))
        reply = range(max(start, prompt_length), end)  # reply tokens fed back
        if reply:
            ids = torch.tensor(request.token_ids[reply.start:reply.stop], device=self.hidden_cache.device)
            embeds = self.thinker_embed(ids)
            for i, position in enumerate(reply):
                speech.add_reply_token(hidden[position - start], embeds[i])

    def _rows(self, request: Request, positions: range, block_size: int) -> torch.Tensor:
        """hidden_cache rows of the request's tokens at `positions` (in their blocks, like their K/V)."""
        ids = request.blocks.block_ids
        rows = [ids[p // block_size] * block_size + p % block_size for p in positions]
        return torch.tensor(rows, dtype=torch.long, device=self.hidden_cache.device)


class SpeechStage:
    """The talker's side: each spoken request's SpeechStream, stepped together. Its streams are
    told the thinker's states by FinalHiddenStates (in the thinker's engine) or by feeds
    (engine/speech_engine.py)."""

    def __init__(self, talker: Talker, token2wav: Token2Wav, thinker_embed: torch.nn.Embedding,
                 settings: SpeechSettings, *, max_streams: int, context_length: int,
                 speech_lead_s: float = 1.5, clock: Callable[[], float] = time.monotonic,
                 windows_per_step: int | None | str = "auto"):
        """max_streams: talker cache rows (streams at once). speech_lead_s: audio a stream keeps
        ahead of its listener before its windows must be solved; clock: seconds (tests pass
        their own). windows_per_step: windows solved per step at most (None: every waiting
        one); "auto": None on a GPU, 1 on a CPU."""
        self.talker, self.token2wav, self.settings = talker, token2wav, settings
        self.thinker_embed = thinker_embed
        self.speech_lead_s, self.clock = speech_lead_s, clock
        if windows_per_step == "auto":
            windows_per_step = None if next(token2wav.parameters()).device.type == "cuda" else 1
        self.windows_per_step = windows_per_step
        # a talker row holds the prompt, 2 more inputs and every codec token
        self.talker_cache: KVCache = talker.make_cache(max_streams, context_length + 2 + settings.talker_max_new_tokens)

    def new_stream(self, voice: Voice, seed: int | None, slot: int) -> SpeechStream:
        """The speech of one request, in talker row `slot`."""
        return SpeechStream(self.talker, self.token2wav, self.thinker_embed, self.settings, voice, seed,
                            self.talker_cache, slot)

    def open(self, request: Request) -> None:
        """A spoken request was admitted with talker row `request.talker_slot`."""
        request.speech = self.new_stream(request.voice, request.sampling.seed, request.talker_slot)

    # the stage's own step

    def step(self, speaking: list[Request], fail: Fail) -> None:
        """One talker step for every ready stream, together; then token2wav windows. A
        request whose speech is over gets its tail (`speech_done` then True)."""
        ready = [r for r in speaking if not r.failed and r.speech.ready]
        if ready:
            try:
                codes = talker_step(self.talker, [r.speech.talker_stream for r in ready], self.talker_cache)
            except Exception as error:  # noqa: BLE001 - a bug: the streams in this step fail
                for request in ready:
                    fail(request, error)
                codes = []
            for request, code in zip(ready, codes):
                guarded(request, fail, request.speech.take, code)
        self._synthesize(speaking, fail)
        for request in speaking:
            speech = request.speech
            if request.finished and not request.failed and speech.done and not speech.windows:
                guarded(request, fail, self._end, request)  # its solved windows are out: flush the tail

    def _end(self, request: Request) -> None:
        if (chunk := request.speech.flush()) is not None:
            request.audio.append(chunk)
        request.speech_done = True

    def _synthesize(self, speaking: list[Request], fail: Fail) -> None:
        """Collect the windows the streams' codes completed; once one is urgent, solve the
        waiting windows (see the module doc for which); each stream's audio goes out in its
        own order as soon as its windows so far are solved."""
        for request in speaking:
            if not request.failed:
                request.speech.windows += guarded(request, fail, request.speech.due_windows) or []
        waiting = [r for r in speaking if r.speech.windows and not r.failed]
        full = sum(len(r.speech.windows) for r in waiting) >= self.talker_cache.max_slots
        if not (full or any(self._urgent(r) for r in waiting)):
            return
        waiting.sort(key=self._audio_ahead)
        if self.windows_per_step is None:
            due = [(r, window) for r in waiting for window in r.speech.windows]
        else:  # each stream's next window only: the rest wait for later steps, in order
            due = [(r, r.speech.windows[0]) for r in waiting][: self.windows_per_step]
        taken = {id(window) for _, window in due}
        for request in waiting:
            request.speech.windows = [w for w in request.speech.windows if id(w) not in taken]
        queues: dict[Request, list[DiTWindow]] = {}  # each stream's windows of this solve, in order
        for request, window in due:
            queues.setdefault(request, []).append(window)
        solved: dict[int, torch.Tensor] = {}  # id(window) → mel
        for indices in window_batches([window for _, window in due]):
            batch = [due[i][1] for i in indices]
            try:
                solved.update(zip(map(id, batch), solve_windows(batch)))
            except Exception as error:  # noqa: BLE001 - a bug: the streams in this batch fail
                log.exception("token2wav solve failed")
                for i in indices:
                    fail(due[i][0], error)
            for request, queue in queues.items():  # a window completes only after its stream's earlier ones
                while queue and not request.failed and id(queue[0]) in solved:
                    window = queue.pop(0)
                    guarded(request, fail, self._emit_window, request, window, solved.pop(id(window)))

    def _audio_ahead(self, request: Request) -> float:
        """Seconds of audio its listener has still to hear (-inf: nothing heard yet)."""
        speech = request.speech
        if speech.first_audio_at is None:
            return float("-inf")
        return speech.audio_seconds - (self.clock() - speech.first_audio_at)

    def _urgent(self, request: Request) -> bool:
        """Its listener would wait for its next window: nothing heard yet, its speech is over
        (the rest is flushed now), or less than speech_lead_s of audio is left to play."""
        return request.speech.done or self._audio_ahead(request) < self.speech_lead_s

    def _emit_window(self, request: Request, window: DiTWindow, mel: torch.Tensor) -> None:
        speech = request.speech
        if (chunk := speech.complete(window, mel)) is not None:
            if speech.first_audio_at is None:
                speech.first_audio_at = self.clock()
            request.audio.append(chunk)


def guarded(request: Request, fail: Fail, work: Callable, *args):
    """Run one request's own work; an error there (a bad media item, a bug) fails it alone."""
    try:
        return work(*args)
    except Exception as error:  # noqa: BLE001 - reported to the request's caller
        log.exception("request %s failed", request.request_id)
        fail(request, error)
        return None
