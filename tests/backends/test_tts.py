"""hibari speech: format, voices, speed, streaming, and a round trip through Whisper."""

import threading

import numpy as np
import pytest

from omnilive.backends.asr import WhisperASR
from omnilive.backends.assets import whisper_base_dir
from omnilive.backends.tts import OPENAI_VOICES, HibariTTS, SynthesisQueue
from omnilive.types import ASR_SAMPLE_RATE, SPEECH_SAMPLE_RATE, AudioInput, EngineError
from tests.speech_helpers import needs_speech_tools, resample, wer

TWO_SENTENCES = "The capital of France is Paris. It is known for the Eiffel Tower."


@pytest.fixture(scope="module")
def tts():
    return HibariTTS()


def test_only_voices_on_disk_are_offered(tts):
    assert tts.default_voice == "heart"
    assert "heart" in tts.voices
    from hibari.voices import voice_path

    for voice in tts.voices:  # none of them would need a download
        voice_path(voice, download_missing=False)


def test_openai_voice_names_map_onto_real_voices(tts):
    for name in OPENAI_VOICES:
        assert tts.resolve_voice(name) in tts.voices
        assert tts.resolve_voice(name.upper()) == tts.resolve_voice(name)
    assert tts.resolve_voice(None) == tts.default_voice
    assert set(tts.accepted_voices) == set(tts.voices) | set(OPENAI_VOICES)
    described = {d["name"]: d["speaks_as"] for d in tts.describe_voices()}
    assert described["alloy"] == tts.resolve_voice("alloy")
    with pytest.raises(EngineError) as error:
        tts.resolve_voice("no-such-voice")
    assert error.value.param == "voice" and "heart" in error.value.message


def test_synthesizes_24khz_float32_speech_of_plausible_length(tts):
    audio = tts.synthesize(TWO_SENTENCES, voice="alloy")
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / SPEECH_SAMPLE_RATE
    words = len(TWO_SENTENCES.split())
    assert 0.2 * words < seconds < 0.6 * words  # people speak 2-4 words per second
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silence


def test_stream_gives_one_chunk_per_sentence_and_equals_whole(tts):
    chunks = list(tts.stream(TWO_SENTENCES))
    assert len(chunks) == 2
    np.testing.assert_array_equal(np.concatenate(chunks), tts.synthesize(TWO_SENTENCES))


def test_nothing_speakable_gives_empty_audio(tts):
    assert len(tts.synthesize("")) == 0
    assert list(tts.stream("   \n ")) == []


def test_speed_changes_duration_within_the_supported_range(tts):
    text = "The quick brown fox jumps over the lazy dog."
    normal = len(tts.synthesize(text))
    assert len(tts.synthesize(text, speed=0.5)) == pytest.approx(2 * normal, rel=0.1)
    assert len(tts.synthesize(text, speed=2.0)) == pytest.approx(normal / 2, rel=0.15)
    for unsupported in (0.25, 4.0):
        with pytest.raises(EngineError) as error:
            tts.synthesize(text, speed=unsupported)
        assert error.value.param == "speed"


@needs_speech_tools
def test_whisper_hears_what_hibari_says(tts):
    asr = WhisperASR(whisper_base_dir())
    for text in (TWO_SENTENCES, "Spiders have eight legs, and insects have six."):
        speech = resample(tts.synthesize(text), SPEECH_SAMPLE_RATE, ASR_SAMPLE_RATE)
        heard = asr.transcribe(AudioInput(speech), language="en").text
        assert wer(text, heard) <= 0.1, heard


def test_synthesis_queue_speaks_first_clauses_before_later_ones(tts):
    queue = SynthesisQueue()
    started, release, order = threading.Event(), threading.Event(), []

    def speak(name: str, text: str) -> np.ndarray:
        if name == "busy":
            started.set()
            release.wait(10)
        order.append(name)
        return tts.synthesize(text)

    try:
        busy = queue.submit(SynthesisQueue.LATER, speak, "busy", "One moment.")
        assert started.wait(10)  # the worker is busy: everything below queues behind it
        later = [queue.submit(SynthesisQueue.LATER, speak, f"later {i}", "And then more.") for i in range(2)]
        first = queue.submit(SynthesisQueue.FIRST, speak, "first", "Hello there.")
        dropped = queue.submit(SynthesisQueue.LATER, speak, "dropped", "Nobody waits for this.")
        assert dropped.cancel()  # a reply that went away: its clause is never synthesised
        release.set()
        audio = first.result(30)
        assert [f.result(30).size > 0 for f in later] == [True, True] and busy.result(30).size > 0
        assert order == ["busy", "first", "later 0", "later 1"]
        assert np.array_equal(audio, tts.synthesize("Hello there."))  # the job's own result, unchanged
    finally:
        queue.shutdown()
    with pytest.raises(RuntimeError):
        queue.submit(SynthesisQueue.FIRST, speak, "late", "Too late.")

