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
- a short encoder window for short clips: Whisper pads every clip to 30 s and the encoder's
  cost follows the window (30 s: ~0.8 s CPU; 10 s: ~0.2 s). A clip under 27 s is encoded in
  a max(10 s, clip + 3 s) window (as whisper.cpp's audio_ctx); when that decode is unsure (a
  segment's mean log-probability under -0.6, or no text) it is decoded again with the full window.
  Measured on 45 espeak-ng questions: WER 0.132 (30 s) vs 0.177 (short only) vs 0.14 (short
  with fallback, 8 of 45 decoded twice). Shorter windows (5 s) hallucinate on noise and loop.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

from omnilive.types import ASR_SAMPLE_RATE, AudioInput, Transcript, TranscriptSegment

WHISPER_WINDOW_S = 30.0  # Whisper's fixed input window
FRAMES_PER_S = 100  # mel frames
SHORT_WINDOW_MIN_S = 10.0
SHORT_WINDOW_MARGIN_S = 3.0  # quiet after the clip in the window: Whisper sees where speech ends
UNSURE_LOGPROB = -0.6  # a segment's mean token log-probability below this: decode again, full window


class WhisperASR:
    """Loads the model once; `transcribe` may be called from any thread (one runs at a time)."""

    def __init__(self, model_dir: Path | str, compute_type: str = "int8", cpu_threads: int = 2, beam_size: int = 1,
                 short_window: bool = True):
        self.model_dir = Path(model_dir)
        self.beam_size = beam_size
        self.short_window = short_window
        self._model = _windowed_model_class()(
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
        short_s = max(SHORT_WINDOW_MIN_S, duration_s + SHORT_WINDOW_MARGIN_S)
        # word timestamps align on the cross-attention of the whole window: keep it whole for them
        windows = [short_s] if self.short_window and short_s < WHISPER_WINDOW_S and not word_timestamps else []
        with self._lock:
            if windows:
                segments, detected = self._decode(samples, windows[0], language, prompt, word_timestamps)
                if not _unsure(segments):
                    return segments, detected
            return self._decode(samples, WHISPER_WINDOW_S, language, prompt, word_timestamps)

    def _decode(self, samples: np.ndarray, window_s: float, language: str | None, prompt: str | None,
                word_timestamps: bool):
        self._model.encoder_frames = round(window_s * FRAMES_PER_S)
        segments, info = self._model.transcribe(
            samples,
            language=language,
            initial_prompt=prompt or None,
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,  # a wrong segment must not poison the next one
            vad_filter=len(samples) / ASR_SAMPLE_RATE > WHISPER_WINDOW_S,
            word_timestamps=word_timestamps,
        )
        return list(segments), info.language  # the generator decodes lazily: finish inside the lock


def _unsure(segments) -> bool:
    texts = [s.text.strip() for s in segments]
    return not any(texts) or any(s.avg_logprob < UNSURE_LOGPROB for s in segments)


@functools.cache
def _windowed_model_class():
    """faster-whisper's WhisperModel whose encoder sees only the first `encoder_frames` mel frames."""
    # imported here: it pulls in ctranslate2 and av
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):
        encoder_frames = int(WHISPER_WINDOW_S * FRAMES_PER_S)  # set per call, under the ASR lock

        def encode(self, features):  # features: [80, 3000] or [1, 80, 3000], zero-padded past the clip
            return super().encode(features[..., : self.encoder_frames])

    return WindowedWhisperModel


def _mono_float32(audio: AudioInput) -> np.ndarray:
    samples = np.ascontiguousarray(audio.samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {samples.shape}")
    return samples
