"""Silero VAD on espeak-ng speech padded with silence."""

import numpy as np
import pytest

from omnilive.backends.vad import SileroVAD, VadEvent
from omnilive.types import ASR_SAMPLE_RATE as SR
from tests.speech_helpers import QUESTIONS, espeak_wav, needs_speech_tools, speech_bounds, with_silence

pytestmark = needs_speech_tools


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


@pytest.fixture(scope="module")
def padded_question():
    return with_silence(espeak_wav(QUESTIONS[0], SR), SR, before_s=1.0, after_s=1.5)


def test_finds_start_and_end_of_speech_within_100ms(vad):
    for question in QUESTIONS[:2]:
        audio = with_silence(espeak_wav(question, SR), SR, before_s=1.0, after_s=1.5)
        true_start, true_end = speech_bounds(audio, SR)
        vad.reset()
        events = vad.process(audio)
        assert [e.kind for e in events] == ["speech_start", "speech_end"]
        assert events[0].ms / 1000 == pytest.approx(true_start, abs=0.1)
        assert events[1].ms / 1000 == pytest.approx(true_end, abs=0.1)


def test_openai_padding_is_applied_to_audio_ms(padded_question):
    vad = SileroVAD(prefix_padding_ms=300, silence_duration_ms=500)
    start, end = vad.process(padded_question)
    assert start.audio_ms == start.ms - 300
    assert end.audio_ms == end.ms + 500


def test_any_chunking_and_pcm16_give_the_same_events(vad, padded_question):
    vad.reset()
    whole = vad.process(padded_question)
    pcm16 = (padded_question * 32767).astype(np.int16)
    for size in (160, 480, 1000, 4800):  # 10 ms, 30 ms, odd, 300 ms
        vad.reset()
        events = [e for i in range(0, len(pcm16), size) for e in vad.process(pcm16[i:i + size])]
        assert [e.kind for e in events] == [e.kind for e in whole]
        assert all(abs(a.ms - b.ms) <= 32 for a, b in zip(events, whole))  # int16 rounding may move a frame


def test_a_short_pause_does_not_end_speech_but_a_long_one_does(vad):
    spoken = espeak_wav("Hello there", SR)
    start, end = speech_bounds(spoken, SR)
    word = spoken[int(start * SR):int(end * SR)]  # espeak adds ~0.35 s of silence at the end
    pause = lambda s: np.zeros(int(s * SR), np.float32)  # noqa: E731
    vad.reset()
    short = vad.process(np.concatenate([pause(0.5), word, pause(0.2), word, pause(1.0)]))
    assert [e.kind for e in short] == ["speech_start", "speech_end"]
    vad.reset()
    long = vad.process(np.concatenate([pause(0.5), word, pause(1.0), word, pause(1.0)]))
    assert [e.kind for e in long] == ["speech_start", "speech_end"] * 2


def test_silence_and_faint_noise_are_not_speech(vad):
    rng = np.random.default_rng(0)
    vad.reset()
    assert vad.process(np.zeros(2 * SR, np.float32)) == []
    assert vad.process((0.003 * rng.standard_normal(2 * SR)).astype(np.float32)) == []
    assert not vad.speaking and vad.position_ms == 4000


def test_speech_still_going_at_the_end_has_no_end_event(vad):
    vad.reset()
    events = vad.process(with_silence(espeak_wav("Hello there", SR), SR, 0.5, 0.1))
    assert events == [VadEvent("speech_start", events[0].ms, events[0].audio_ms)] and vad.speaking


def test_does_not_touch_torch_threads():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    SileroVAD().process(np.zeros(SR, np.float32))
    assert torch.get_num_threads() == threads
