"""Text to speech with hibari-tts (7.9 MB ONNX model, 24 kHz, ~100x real time on one core).

    tts = HibariTTS()
    audio = tts.synthesize("Hello there.")            # float32 (n,) at 24 kHz
    for chunk in tts.stream(long_text, voice="alloy"): ...   # one array per sentence

Voices. hibari ships one voice inside the package ("heart", American English, female); its
other voices download from a model hub on first use, which this server never does. So
`voices` lists only voices whose model file is already on disk (the package, or hibari's cache
if someone put one there). OpenAI voice names are accepted and mapped onto the closest hibari
voice by gender and accent (`OPENAI_VOICES`); when that voice is not on disk they fall back to
the default voice, i.e. with a plain install every OpenAI name speaks as "heart".

Speed. hibari's model takes a speaking-rate input, documented for 0.5 (slow) .. 2.0 (fast);
above ~2 the model stops speeding up (4.0 gives ~2.2x, measured), so values outside
[0.5, 2.0] are rejected rather than silently wrong.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future
from typing import Callable, Iterator

import numpy as np

from omnilive.types import SPEECH_SAMPLE_RATE, EngineError

MIN_SPEED, MAX_SPEED = 0.5, 2.0

# OpenAI voice -> hibari voice. OpenAI describes its voices only loosely; we go by the commonly
# heard gender (and fable's British accent). hibari voices: heart/kore (US female), fenrir (US
# male), emma (GB female), fable (GB male).
OPENAI_VOICES = {
    "alloy": "heart",
    "ash": "fenrir",
    "ballad": "fable",
    "coral": "kore",
    "echo": "fenrir",
    "fable": "fable",
    "nova": "heart",
    "onyx": "fenrir",
    "sage": "kore",
    "shimmer": "kore",
    "verse": "fenrir",
    "marin": "heart",
    "cedar": "fenrir",
}


class HibariTTS:
    """One loaded hibari model per voice (loaded on first use); thread-safe."""

    def __init__(self, threads: int = 1, seed: int | None = 0):
        from hibari.voices import DEFAULT, VOICES, voice_path

        self.threads = threads
        self.seed = seed  # fixed noise seed: the same text gives the same audio (None = random)
        self.sample_rate = SPEECH_SAMPLE_RATE
        self.default_voice = DEFAULT
        self.voices = tuple(name for name in VOICES if _on_disk(voice_path, name))
        self._voice_info = {name: VOICES[name] for name in self.voices}
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()  # guards model loading and the (stateful) G2P
        self._model(self.default_voice)  # load and warm the default now, not on the first request

    @property
    def accepted_voices(self) -> tuple[str, ...]:
        """Every name `resolve_voice` accepts: the real voices, then the OpenAI names."""
        return self.voices + tuple(name for name in OPENAI_VOICES if name not in self.voices)

    def describe_voices(self) -> list[dict]:
        """One dict per voice name, saying which real voice it speaks with."""
        real = [dict(name=n, speaks_as=n, **_public(self._voice_info[n])) for n in self.voices]
        aliases = [dict(name=n, speaks_as=self.resolve_voice(n), intended=OPENAI_VOICES[n])
                   for n in OPENAI_VOICES if n not in self.voices]
        return real + aliases

    def resolve_voice(self, voice: str | None) -> str:
        """The hibari voice that speaks for `voice` (None = default); EngineError if unknown."""
        if voice is None or voice == "":
            return self.default_voice
        name = voice.lower()
        if name in self.voices:
            return name
        if name in OPENAI_VOICES:
            mapped = OPENAI_VOICES[name]
            return mapped if mapped in self.voices else self.default_voice
        raise EngineError(
            f"unknown voice {voice!r}; available: {', '.join(self.accepted_voices)}", param="voice", code="invalid_voice"
        )

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> np.ndarray:
        """The whole of `text` as one float32 array at 24 kHz (empty if nothing is speakable)."""
        parts = list(self.stream(text, voice, speed))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def stream(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        """One float32 array per sentence, each as soon as it is synthesised.

        Unlike hibari's own `stream`, which phonemises the whole text first, this phonemises one
        sentence at a time, so the first audio waits only for the first sentence."""
        _check_speed(speed)
        model = self._model(self.resolve_voice(voice))
        rng = np.random.default_rng(self.seed)
        for sentence in model.split_sentences(text):
            with self._lock:
                phoneme_chunks = model.phonemize(sentence)  # long sentences split at clauses
            for phonemes in phoneme_chunks:
                audio = model.from_ids(model.ids(phonemes), speed, rng)
                if len(audio):
                    yield audio.astype(np.float32, copy=False)

    def _model(self, voice: str):
        with self._lock:
            model = self._models.get(voice)
            if model is None:
                from hibari import Hibari

                model = Hibari(voice=voice, threads=self.threads)
                model.from_phonemes(model.g2p("Warm up, 42."), seed=0)  # G2P + tagger + ONNX load lazily
                model.g2p.oov  # noqa: B018 - the out-of-vocabulary net loads on first unknown word
                self._models[voice] = model
            return model


class SynthesisQueue:
    """One worker thread that runs synthesis jobs most urgent first (FIFO among equals).

    With several replies speaking at once, a reply's first clause is what its user is waiting
    for, while a later clause has the audio already sent ahead of it to play meanwhile; so
    first clauses (priority 0) overtake later ones (priority 1) instead of queueing behind
    them. One thread: hibari is cheap per clause, and more threads would only take cores from
    the LLM.
    """

    FIRST, LATER = 0, 1

    def __init__(self, name: str = "tts"):
        self._jobs: list[tuple[int, int, Future, Callable, tuple]] = []  # a heap
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable, *args) -> Future:
        future: Future = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the synthesis queue is shut down")
            heapq.heappush(self._jobs, (priority, next(self._order), future, fn, args))
            self._wake.notify()
        return future

    def shutdown(self) -> None:
        """Stop after the running job; queued jobs are cancelled."""
        with self._wake:
            self._closed = True
            jobs, self._jobs = self._jobs, []
            self._wake.notify()
        for job in jobs:
            job[2].cancel()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not (self._jobs or self._closed):
                    self._wake.wait()
                if self._closed:
                    return
                _, _, future, fn, args = heapq.heappop(self._jobs)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # the caller gets it
                future.set_exception(error)


def _on_disk(voice_path, name: str) -> bool:
    try:
        voice_path(name, download_missing=False)
        return True
    except FileNotFoundError:
        return False


def _public(info: dict) -> dict:
    return dict(language=info["language"], accent=info["accent"], gender=info["gender"])


def _check_speed(speed: float) -> None:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise EngineError(
            f"speed {speed} is outside what this voice model can do ({MIN_SPEED} to {MAX_SPEED})",
            param="speed", code="invalid_speed",
        )
