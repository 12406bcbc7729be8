"""Speech to text with Whisper base through faster-whisper (CTranslate2, int8 on CPU).

    asr = WhisperASR(whisper_base_dir())
    asr.transcribe(AudioInput(samples)).text   # -> "What is the capital of France?"

Latency choices (measured on 2 CPU cores; numbers in docs/benchmarks.md):
- temperature 0 only: faster-whisper's default fallback re-decodes low-confidence clips at
  higher temperatures, which costs 1-6 s at random; a greedy answer now beats a better one later.
- beam size 1: greedy decoding; beam 5 costs ~2x for little gain on short questions.
- no VAD filter for short clips: Whisper encodes a fixed 30 s window anyway, so cutting silence
  out of a short clip saves nothing; long recordings get it to skip silent stretches.
- pass `language` when it is known: auto-detection costs an extra ~0.65 s.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from omnilive.engine.types import ASR_SAMPLE_RATE, AudioInput, Transcript, TranscriptSegment

WHISPER_WINDOW_S = 30.0  # Whisper's fixed input window


class WhisperASR:
    """Loads the model once; `transcribe` may be called from any thread (one runs at a time)."""

    def __init__(self, model_dir: Path | str, compute_type: str = "int8", cpu_threads: int = 2, beam_size: int = 1):
        from faster_whisper import WhisperModel  # imported here: it pulls in ctranslate2 and av

        self.model_dir = Path(model_dir)
        self.beam_size = beam_size
        self._model = WhisperModel(
            str(self.model_dir), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True
        )
        # CTranslate2 allows parallel calls only with num_workers > 1, which multiplies memory and
        # fights for the same cores; one at a time is what a 2-core machine can do anyway.
        self._lock = threading.Lock()

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self._model.supported_languages)

    def transcribe(
        self,
        audio: AudioInput,
        language: str | None = None,
        prompt: str | None = None,
        word_timestamps: bool = False,
    ) -> Transcript:
        """Text, language and timed segments of `audio` (16 kHz mono float32).

        word_timestamps=True aligns segment boundaries to words (slower: cross-attention alignment)."""
        samples = _mono_float32(audio)
        duration_s = len(samples) / ASR_SAMPLE_RATE
        if duration_s == 0.0:
            return Transcript(text="", language=language or "en", duration_s=0.0)
        segments, detected = self._run(samples, language, prompt, word_timestamps)
        timed = tuple(TranscriptSegment(start=s.start, end=s.end, text=s.text.strip()) for s in segments)
        text = " ".join(s.text for s in timed if s.text)
        return Transcript(text=text, language=detected, duration_s=duration_s, segments=timed)

    def words(self, audio: AudioInput, language: str | None = None) -> list[tuple[float, float, str]]:
        """(start, end, word) in seconds for each spoken word."""
        samples = _mono_float32(audio)
        if len(samples) == 0:
            return []
        segments, _ = self._run(samples, language, None, word_timestamps=True)
        return [(w.start, w.end, w.word.strip()) for s in segments for w in (s.words or ())]

    def _run(self, samples: np.ndarray, language: str | None, prompt: str | None, word_timestamps: bool):
        if language is not None and language not in self._model.supported_languages:
            raise ValueError(f"unsupported language {language!r} for Whisper")
        duration_s = len(samples) / ASR_SAMPLE_RATE
        with self._lock:
            segments, info = self._model.transcribe(
                samples,
                language=language,
                initial_prompt=prompt or None,
                beam_size=self.beam_size,
                temperature=0.0,
                condition_on_previous_text=False,  # a wrong segment must not poison the next one
                vad_filter=duration_s > WHISPER_WINDOW_S,
                word_timestamps=word_timestamps,
            )
            return list(segments), info.language  # the generator decodes lazily: finish inside the lock


def _mono_float32(audio: AudioInput) -> np.ndarray:
    samples = np.ascontiguousarray(audio.samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {samples.shape}")
    return samples
