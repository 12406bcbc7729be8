"""Real speech for tests: espeak-ng voices, resampling with sox, and word error rate.

    samples = espeak_wav("What is the capital of France?", 16_000)   # float32 mono
    wer("What is the capital of France?", "what is the capital of france") == 0.0

Needs the Debian packages espeak-ng and sox; `needs_speech_tools` skips a test without them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata

import numpy as np
import pytest

needs_speech_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox"
)

QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Please tell me a short story about a dragon.",
    "Can you explain how a rainbow is formed?",
)


def espeak_wav(text: str, sample_rate: int = 16_000, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """`text` spoken by espeak-ng, as float32 mono samples in [-1, 1] at `sample_rate`."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    return _sox(wav, ["-t", "wav", "-"], sample_rate)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (sox's default 'high' quality)."""
    if from_rate == to_rate:
        return samples.astype(np.float32)
    raw = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    return _sox(raw, ["-t", "f32", "-r", str(from_rate), "-c", "1", "-"], to_rate)


def _sox(data: bytes, input_args: list[str], sample_rate: int) -> np.ndarray:
    out = subprocess.run(
        ["sox", "-V1", *input_args, "-t", "f32", "-r", str(sample_rate), "-c", "1", "-"],
        input=data, check=True, capture_output=True,
    ).stdout
    return np.frombuffer(out, dtype="<f4").copy()


def with_silence(samples: np.ndarray, sample_rate: int, before_s: float, after_s: float) -> np.ndarray:
    """`samples` with digital silence before and after (for VAD tests)."""
    pad = lambda seconds: np.zeros(int(round(seconds * sample_rate)), np.float32)  # noqa: E731
    return np.concatenate([pad(before_s), samples.astype(np.float32), pad(after_s)])


def speech_bounds(samples: np.ndarray, sample_rate: int, level: float = 0.01) -> tuple[float, float]:
    """(first, last) time in seconds where |sample| exceeds `level`: ground truth for clean speech."""
    loud = np.flatnonzero(np.abs(samples) > level)
    return loud[0] / sample_rate, loud[-1] / sample_rate


_NUMBER_WORDS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
    "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten",
}


def normalise_words(text: str) -> list[str]:
    """Lower-case words without punctuation or accents; single digits spelled out."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()
    return [_NUMBER_WORDS.get(w, w).strip("'") for w in words if w.strip("'")]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / number of reference words."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    if not ref:
        return float(bool(hyp))
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)
