"""Voice activity detection for streaming 16 kHz audio: Silero VAD's ONNX model run directly.

    vad = SileroVAD(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    for chunk in microphone_chunks:          # any length, float32 (or int16) 16 kHz mono
        for event in vad.process(chunk):     # VadEvent("speech_start", ms=1210), VadEvent("speech_end", ...)
            ...

We run `silero_vad/data/silero_vad.onnx` with onnxruntime instead of importing the `silero_vad`
package: importing it imports torch and sets torch to one thread for the whole process.

The model reads 512-sample frames (32 ms) plus the last 64 samples of the previous frame as
context, and carries a recurrent state (2, 1, 128) from frame to frame. Like Silero's own
iterator we use hysteresis: speech starts at a frame whose probability is >= threshold and
ends after `silence_duration_ms` of frames below threshold - 0.15.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from omnilive.backends.assets import PackagedFile, package_file
from omnilive.types import ASR_SAMPLE_RATE

FRAME_SAMPLES = 512  # what the 16 kHz model accepts: 32 ms
CONTEXT_SAMPLES = 64
FRAME_MS = FRAME_SAMPLES * 1000 // ASR_SAMPLE_RATE
END_HYSTERESIS = 0.15


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["speech_start", "speech_end"]
    ms: int  # the speech boundary, in ms since the start of the stream (or the last reset)
    # OpenAI's audio_start_ms / audio_end_ms: the start moved back by the prefix padding, the end
    # moved forward by the silence duration (the audio a server would commit for this turn).
    audio_ms: int


class SileroVAD:
    """Stateful over one audio stream; not thread-safe (one instance per stream)."""

    def __init__(
        self,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        model_path: Path | str | None = None,
    ):
        import onnxruntime as ort

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        path = model_path or package_file(PackagedFile("silero-vad", "data/silero_vad.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # ~8 ms per second of audio
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._sample_rate = np.array(ASR_SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: time restarts at 0 ms."""
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), np.float32)
        self._pending = np.zeros(0, np.float32)  # samples not yet filling a frame
        self._frames_done = 0
        self._speaking = False
        self._silence_since_ms: int | None = None  # end of the last speech frame, while quiet

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def position_ms(self) -> int:
        """How much audio has been judged so far."""
        return self._frames_done * FRAME_MS

    def process(self, chunk: np.ndarray) -> list[VadEvent]:
        """Feed the next samples of the stream; events for each boundary found in them."""
        samples = _as_float32(chunk)
        self._pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n_frames = len(self._pending) // FRAME_SAMPLES
        events = []
        for i in range(n_frames):
            frame = self._pending[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]
            event = self._step(self._speech_probability(frame))
            if event is not None:
                events.append(event)
        self._pending = self._pending[n_frames * FRAME_SAMPLES:].copy()
        return events

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability per 32 ms frame of a whole clip (a fresh state; the stream is untouched)."""
        saved = self._state, self._context
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), np.float32)
        x = _as_float32(samples)
        x = np.pad(x, (0, -len(x) % FRAME_SAMPLES))
        try:
            return np.array([self._speech_probability(f) for f in x.reshape(-1, FRAME_SAMPLES)], np.float32)
        finally:
            self._state, self._context = saved

    def _speech_probability(self, frame: np.ndarray) -> float:
        x = np.concatenate([self._context, frame[None, :]], axis=1)  # (1, 64 + 512)
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sample_rate})
        self._context = x[:, -CONTEXT_SAMPLES:]
        return float(out[0, 0])

    def _step(self, probability: float) -> VadEvent | None:
        frame_start_ms = self.position_ms
        self._frames_done += 1
        frame_end_ms = self.position_ms
        if probability >= self.threshold:
            self._silence_since_ms = None
            if not self._speaking:
                self._speaking = True
                return VadEvent("speech_start", frame_start_ms, max(0, frame_start_ms - self.prefix_padding_ms))
            return None
        if not self._speaking or probability >= self.threshold - END_HYSTERESIS:
            return None
        if self._silence_since_ms is None:
            self._silence_since_ms = frame_start_ms
        if frame_end_ms - self._silence_since_ms >= self.silence_duration_ms:
            end_ms, self._silence_since_ms, self._speaking = self._silence_since_ms, None, False
            return VadEvent("speech_end", end_ms, end_ms + self.silence_duration_ms)
        return None


def _as_float32(chunk: np.ndarray) -> np.ndarray:
    chunk = np.asarray(chunk)
    if chunk.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {chunk.shape}")
    if chunk.dtype == np.int16:  # PCM16 as it arrives over the wire
        return chunk.astype(np.float32) / 32768.0
    return chunk.astype(np.float32, copy=False)
