"""Whisper base on real (espeak-ng) speech."""

import threading

import numpy as np
import pytest

from omnilive.backends.asr import WhisperASR
from omnilive.backends.assets import whisper_base_dir
from omnilive.types import ASR_SAMPLE_RATE, AudioInput
from tests.speech_helpers import QUESTIONS, espeak_wav, needs_speech_tools, wer

pytestmark = needs_speech_tools


@pytest.fixture(scope="module")
def asr():
    return WhisperASR(whisper_base_dir())


@pytest.fixture(scope="module")
def spoken_questions():
    return [(q, espeak_wav(q, ASR_SAMPLE_RATE)) for q in QUESTIONS]


def test_transcribes_spoken_questions(asr, spoken_questions):
    errors = []
    for question, samples in spoken_questions:
        transcript = asr.transcribe(AudioInput(samples), language="en")
        errors.append(wer(question, transcript.text))
        assert transcript.language == "en"
        assert transcript.duration_s == pytest.approx(len(samples) / ASR_SAMPLE_RATE)
        assert transcript.segments and transcript.segments[0].start >= 0.0
        assert transcript.segments[-1].end <= transcript.duration_s + 0.5
        assert " ".join(s.text for s in transcript.segments) == transcript.text
    assert max(errors) <= 0.35, errors  # espeak's robot voice costs Whisper base ~1 word per question
    assert np.mean(errors) <= 0.2, errors


def test_detects_the_language_when_not_given(asr, spoken_questions):
    question, samples = spoken_questions[2]
    transcript = asr.transcribe(AudioInput(samples))
    assert transcript.language == "en"
    assert wer(question, transcript.text) <= 0.35


def test_prompt_is_accepted_and_text_stays_right(asr, spoken_questions):
    question, samples = spoken_questions[2]
    transcript = asr.transcribe(AudioInput(samples), language="en", prompt="A question about dragons.")
    assert wer(question, transcript.text) <= 0.35


def test_word_timestamps_are_ordered_and_inside_the_clip(asr, spoken_questions):
    question, samples = spoken_questions[2]
    words = asr.words(AudioInput(samples), language="en")
    assert len(words) == pytest.approx(len(question.split()), abs=1)
    starts = [start for start, _, _ in words]
    assert starts == sorted(starts)
    assert all(0.0 <= start <= end <= len(samples) / ASR_SAMPLE_RATE + 0.1 for start, end, _ in words)


def test_concurrent_calls_give_the_same_text_as_sequential(asr, spoken_questions):
    clips = [samples for _, samples in spoken_questions[:2]]
    sequential = [asr.transcribe(AudioInput(c), language="en").text for c in clips]
    concurrent = [None, None]

    def run(i):
        concurrent[i] = asr.transcribe(AudioInput(clips[i]), language="en").text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert concurrent == sequential


def test_empty_audio_gives_empty_text(asr):
    transcript = asr.transcribe(AudioInput(np.zeros(0, np.float32)), language="en")
    assert transcript.text == "" and transcript.segments == ()


def test_rejects_stereo_and_unknown_languages(asr):
    with pytest.raises(ValueError, match="mono"):
        asr.transcribe(AudioInput(np.zeros((2, 16000), np.float32)))
    with pytest.raises(ValueError, match="language"):
        asr.transcribe(AudioInput(np.zeros(16000, np.float32)), language="klingon")
