"""Input audio of a Realtime session: the buffer, turn detection, and transcription ahead of time.

    audio = InputAudio()                        # PCM16 24 kHz in, kept as float32 16 kHz
    chunk = audio.append(pcm16_bytes)           # the new 16 kHz samples
    for event in detector.feed(chunk): ...      # SpeechStarted / Paused / Resumed / SpeechStopped

Latency: the client's silence window (500 ms by default) is time the server would otherwise
spend idle. `TurnDetector` reports a `Paused` event as soon as speech pauses (~100 ms), and the
session starts transcribing the turn right then; when the window closes with no new speech,
`SpeechStopped` carries the same speech end and the transcript is usually already there.
Once that early transcript is in and the user is still quiet, the session may start the
answer too (held back until the turn really ends; see response.Speculation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import av
import numpy as np

from omnilive.backends.vad import FRAME_SAMPLES, SileroVAD
from omnilive.types import ASR_SAMPLE_RATE, SPEECH_SAMPLE_RATE

PAUSE_MS = 96  # three VAD frames of quiet: worth guessing that the turn may be over
ASR_TAIL_MS = 200  # quiet kept after the speech end: Whisper ends words better with it
MAX_BUFFER_S = 15 * 60  # an uncommitted buffer longer than this is refused


def _samples(ms: int) -> int:
    return ms * ASR_SAMPLE_RATE // 1000


class InputAudio:
    """The input audio buffer on the session's timeline: ms since the first audio appended."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=ASR_SAMPLE_RATE)
        self._chunks: list[np.ndarray] = []
        self._start = 0  # session sample index of the buffer's first sample
        self._end = 0  # session sample index after the last sample

    @property
    def start_ms(self) -> int:
        return self._start * 1000 // ASR_SAMPLE_RATE

    @property
    def end_ms(self) -> int:
        return self._end * 1000 // ASR_SAMPLE_RATE

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    def append(self, pcm16: bytes) -> np.ndarray:
        """24 kHz PCM16 → the 16 kHz float32 samples it adds (the resampler keeps state across calls)."""
        if self._end - self._start > MAX_BUFFER_S * ASR_SAMPLE_RATE:
            raise OverflowError("input audio buffer is full")
        pcm = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % 2], dtype="<i2")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SPEECH_SAMPLE_RATE
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        samples = np.concatenate(out) if out else np.zeros(0, np.float32)
        self._chunks.append(samples)
        self._end += len(samples)
        return samples

    def audio(self, from_ms: int | None = None, to_ms: int | None = None) -> np.ndarray:
        """The buffered samples between two session times (clipped to what is buffered)."""
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = [whole]
        lo = 0 if from_ms is None else max(0, _samples(from_ms) - self._start)
        hi = len(whole) if to_ms is None else max(lo, _samples(to_ms) - self._start)
        return whole[lo:hi]

    def drop_until(self, ms: int) -> None:
        """Forget the audio before session time `ms` (committed, or too old to be a turn's padding)."""
        cut = min(self._end, max(self._start, _samples(ms)))
        whole = self.audio()
        self._chunks = [whole[cut - self._start:]]
        self._start = cut

    def clear(self) -> None:
        self.drop_until(self.end_ms + 1)


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # speech start moved back by the prefix padding


@dataclass(frozen=True)
class Paused:
    speech_end_ms: int


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class SpeechStopped:
    speech_end_ms: int
    audio_end_ms: int  # speech end + the silence window: where the turn is cut


TurnEvent = SpeechStarted | Paused | Resumed | SpeechStopped


class TurnDetector:
    """Server VAD on the session timeline (the VAD sees every sample appended since it was made)."""

    def __init__(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int, start_ms: int):
        self.silence_duration_ms = silence_duration_ms
        self.prefix_padding_ms = prefix_padding_ms
        pause_ms = min(PAUSE_MS, silence_duration_ms)
        self._vad = SileroVAD(threshold, prefix_padding_ms, pause_ms)
        self._offset_ms = start_ms  # the session time of the VAD's 0 ms
        self._in_turn = False
        self._paused_at: int | None = None  # speech end of the current pause, session ms

    @property
    def in_turn(self) -> bool:
        return self._in_turn

    @property
    def paused_at(self) -> int | None:
        """The speech end of the pause going on now (session ms), or None while speech goes on."""
        return self._paused_at

    def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for at in range(0, len(samples), FRAME_SAMPLES):  # frame by frame: the window closes on time
            for vad_event in self._vad.process(samples[at:at + FRAME_SAMPLES]):
                if vad_event.kind == "speech_start":
                    if self._paused_at is not None:
                        self._paused_at = None
                        events.append(Resumed())
                    elif not self._in_turn:
                        self._in_turn = True
                        events.append(SpeechStarted(self._offset_ms + vad_event.audio_ms))
                else:
                    self._paused_at = self._offset_ms + vad_event.ms
                    events.append(Paused(self._paused_at))
            now_ms = self._offset_ms + self._vad.position_ms
            if self._paused_at is not None and now_ms - self._paused_at >= self.silence_duration_ms:
                end = self._paused_at
                self._in_turn, self._paused_at = False, None
                events.append(SpeechStopped(end, end + self.silence_duration_ms))
        return events


Transcribe = Callable[[np.ndarray], Awaitable[str]]
GuessReady = Callable[[int, int, str], None]  # (turn start ms, speech end ms, transcript)


class TurnTranscriber:
    """Transcribes a turn at each pause, so the final transcript is often ready at its end.

    Runs are keyed by the speech end they cover: the same key means the same words (what
    follows the speech end is quiet). One guess runs at a time (Whisper cannot be interrupted);
    a pause that comes while one runs is guessed right after it, unless speech resumed. Each
    finished guess is reported to `on_guess`."""

    def __init__(self, transcribe: Transcribe, spawn: Callable[[Awaitable[str]], asyncio.Task] = asyncio.create_task,
                 on_guess: GuessReady | None = None):
        self._transcribe, self._spawn = transcribe, spawn  # spawn: the session tracks (and stops) its tasks
        self._on_guess = on_guess
        self._guess: tuple[int, int, asyncio.Task] | None = None  # (turn start ms, speech end ms, run)
        self._wanted: tuple[int, int, np.ndarray] | None = None  # the pause to guess once the run ends

    def guess(self, start_ms: int, speech_end_ms: int, samples: np.ndarray) -> None:
        self._wanted = (start_ms, speech_end_ms, samples)
        if self._guess is None or self._guess[2].done():
            self._launch()

    def resumed(self) -> None:
        """Speech goes on: a pause not yet guessed is not worth guessing any more."""
        self._wanted = None

    def final(self, start_ms: int, speech_end_ms: int, samples: np.ndarray) -> asyncio.Task:
        """The transcript of the turn: the guess if it covers the same speech, else a new run."""
        guess, self._guess, self._wanted = self._guess, None, None
        if guess is not None and guess[:2] == (start_ms, speech_end_ms):
            return guess[2]
        return self._spawn(self._transcribe(samples))

    def drop(self) -> None:
        self._guess, self._wanted = None, None

    def _launch(self) -> None:
        (start_ms, speech_end_ms, samples), self._wanted = self._wanted, None
        task = self._spawn(self._transcribe(samples))
        guess = self._guess = (start_ms, speech_end_ms, task)
        task.add_done_callback(lambda t: self._guessed(guess, t))

    def _guessed(self, guess: tuple[int, int, asyncio.Task], task: asyncio.Task) -> None:
        failed = task.cancelled() or task.exception() is not None  # a dropped guess may fail unheard
        if not failed and self._guess is guess and self._on_guess is not None:
            self._on_guess(guess[0], guess[1], task.result())
        if self._wanted is not None and (self._guess is None or self._guess[2].done()):
            self._launch()
