"""Streaming speech of the native Qwen2.5-Omni engine (tiny random checkpoint, float32):
thinker tokens → talker codec tokens → token2wav chunks, interleaved in the batched step loop
(one request here; tests/backends/test_native_batching.py runs many), against the whole-reply path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.backends.native_engine import Batch, Job, Runner
from omnilive.engine.sampling import SamplingRow, make_generator
from omnilive.types import (
    AudioChunk,
    Finished,
    Message,
    SamplingParams,
    TextDelta,
)
from omnilive.engine.talker_generate import (
    TALKER_GREEDY,
    TALKER_SAMPLING,
    choose_codec_tokens,
)
from omnilive.model.token2wav_stream import StreamingSchedule

pytest.importorskip("transformers")

STEPS = 3  # token2wav ODE steps: enough to chain windows, cheap on the tiny DiT
REPLY = SamplingParams(temperature=0.0, max_tokens=40, seed=11)
QUESTION = (Message("user", ("Tell me a long story about the sea.",)),)


@pytest.fixture(scope="module")
def prompt(model):
    return model.processor.build(QUESTION, speak=True)


def runner_of(model, **options) -> Runner:
    return Runner(model, context_length=512, prefill_chunk_tokens=16, token2wav_steps=STEPS, **options)


def streamed_job(runner: Runner, prompt, voice, cancel_when=lambda outputs: False) -> tuple[Job, list]:
    """Run one spoken request through the step loop; the job and its outputs in emission order.
    cancel_when(outputs) is asked after each output, as a caller closing its stream would."""
    outputs: list = []
    batch = Batch(runner, max_batch=1)

    def emit(output) -> None:
        outputs.append(output)
        if cancel_when(outputs):
            batch.abort(job)

    job = Job(prompt, REPLY, voice, emit)
    batch.add(job)
    batch.run_until_idle()
    assert not any(isinstance(out, BaseException) for out in outputs), outputs
    return job, outputs


def streamed(runner: Runner, prompt, voice, cancel_when=lambda outputs: False) -> list:
    return streamed_job(runner, prompt, voice, cancel_when)[1]


def audio_of(outputs) -> np.ndarray:
    return np.concatenate([out.samples for out in outputs if isinstance(out, AudioChunk)])


@pytest.mark.parametrize("talker_sampling", [TALKER_GREEDY, TALKER_SAMPLING], ids=["greedy", "sampled"])
def test_streamed_codes_equal_whole_reply_codes(model, prompt, talker_sampling):
    runner, voice = runner_of(model, talker_sampling=talker_sampling), model.voices["Chelsie"]
    job, outputs = streamed_job(runner, prompt, voice)
    reply = runner.think(prompt, REPLY, lambda out: None, lambda: False, keep_hidden=True)
    whole = runner.codec_tokens(reply, voice, REPLY.seed)
    assert len(reply.token_ids) == REPLY.max_tokens  # the tiny thinker talks to the limit
    assert job.token_ids == reply.token_ids
    assert "".join(out.text for out in outputs if isinstance(out, TextDelta)) == reply.text
    assert len(whole) >= 20 and job.speech.codes == whole
    assert max(whole) < runner.speech_vocab_size  # no control token reached token2wav


def test_exact_schedule_streams_the_whole_reply_waveform(model, prompt):
    config = model.token2wav.code2wav_dit_model.config
    runner = runner_of(model, talker_sampling=TALKER_GREEDY, speech_schedule=StreamingSchedule.exact(config, STEPS))
    voice = model.voices["Ethan"]
    outputs = streamed(runner, prompt, voice)
    reply = runner.think(prompt, REPLY, lambda out: None, lambda: False, keep_hidden=True)
    whole = runner.waveform(runner.codec_tokens(reply, voice, REPLY.seed), voice, REPLY.seed)
    chunks = [out for out in outputs if isinstance(out, AudioChunk)]
    assert len(chunks) >= 2  # it did stream
    assert audio_of(outputs).shape == whole.shape
    assert np.abs(audio_of(outputs) - whole).max() <= 1e-4


def test_default_schedule_is_close_to_the_whole_reply_waveform(model, prompt):
    runner, voice = runner_of(model, talker_sampling=TALKER_GREEDY), model.voices["Ethan"]
    outputs = streamed(runner, prompt, voice)
    reply = runner.think(prompt, REPLY, lambda out: None, lambda: False, keep_hidden=True)
    whole = runner.waveform(runner.codec_tokens(reply, voice, REPLY.seed), voice, REPLY.seed)
    difference = np.abs(audio_of(outputs) - whole)
    print(f"default schedule vs whole: max |diff| {difference.max():.4f}, mean {difference.mean():.5f}, "
          f"peak {np.abs(whole).max():.3f}")
    assert audio_of(outputs).shape == whole.shape
    assert 0 < difference.max() < 0.01 * np.abs(whole).max()  # bounded look-ahead: close, not equal (4e-4 measured)


def test_first_audio_leaves_before_the_last_text_token(model, prompt):
    runner = runner_of(model)
    outputs = streamed(runner, prompt, model.voices["Chelsie"])
    kinds = [type(out).__name__ for out in outputs]
    first_audio = kinds.index("AudioChunk")
    last_text = len(kinds) - 1 - kinds[::-1].index("TextDelta")
    assert first_audio < last_text / 2  # well before the reply ends
    assert kinds[-1] == "Finished" and outputs[-1].finish_reason == "length"
    text = "".join(out.text for out in outputs if isinstance(out, TextDelta))
    assert "".join(out.transcript for out in outputs if isinstance(out, AudioChunk)) == text
    # each chunk speaks the text emitted since the previous chunk
    since = ""
    for out in outputs:
        if isinstance(out, TextDelta):
            since += out.text
        elif isinstance(out, AudioChunk):
            assert out.transcript == since
            since = ""


def test_quick_start_speaks_sooner_than_qwens_first_window(model, prompt):
    voice = model.voices["Ethan"]
    quick = streamed(runner_of(model, talker_sampling=TALKER_GREEDY), prompt, voice)  # the default schedule
    qwen = streamed(runner_of(model, talker_sampling=TALKER_GREEDY, speech_schedule=StreamingSchedule()), prompt, voice)

    def texts_before_first_audio(outputs) -> int:
        return [type(out) for out in outputs].index(AudioChunk)

    assert texts_before_first_audio(quick) < texts_before_first_audio(qwen)
    assert audio_of(quick).shape == audio_of(qwen).shape
    assert np.abs(audio_of(quick) - audio_of(qwen)).max() < 0.01 * np.abs(audio_of(qwen)).max()


def test_cancel_mid_speech_stops_within_a_step(model, prompt):
    runner = runner_of(model)
    forwards: list[str] = []
    hooks = [model.thinker.register_forward_hook(lambda *_: forwards.append("thinker")),
             model.talker.register_forward_hook(lambda *_: forwards.append("talker"))]
    marks: dict[str, int] = {}

    def cancel_after_first_chunk(outputs) -> bool:
        if "at" not in marks and isinstance(outputs[-1], AudioChunk):
            marks["at"], marks["outputs"] = len(forwards), len(outputs)
            return True
        return False

    try:
        outputs = streamed(runner, prompt, model.voices["Chelsie"], cancel_when=cancel_after_first_chunk)
    finally:
        for hook in hooks:
            hook.remove()
    after = outputs[marks["outputs"]:]
    assert isinstance(outputs[-1], Finished) and outputs[-1].finish_reason == "abort"
    assert not any(isinstance(out, AudioChunk) for out in after)
    assert len(after) <= 2  # at most the step's own text delta, then Finished
    assert len(forwards) - marks["at"] <= 1  # at most the thinker step under way
    assert outputs[-1].usage.completion_tokens < REPLY.max_tokens


def test_control_tokens_token2wav_cannot_voice_are_never_chosen(model):
    talker = model.talker
    config = talker.talker_config
    speech_vocab = model.token2wav.code2wav_dit_model.text_embed.codec_embed.num_embeddings
    logits = torch.zeros(3, config.vocab_size)
    logits[:, config.tts_codec_mask_token_id] = 50.0  # control token: never chosen
    logits[1, config.tts_codec_end_token_id] = 60.0  # an end token stays choosable
    logits[2, 5] = 40.0  # a plain code
    rows = [SamplingRow(TALKER_GREEDY, make_generator(0), []) for _ in range(3)]
    chosen = choose_codec_tokens(talker, logits, rows, speech_vocab_size=speech_vocab)
    assert chosen[0] < speech_vocab and chosen[1] == config.tts_codec_end_token_id and chosen[2] == 5
    assert choose_codec_tokens(talker, logits, rows)[0] == config.tts_codec_mask_token_id  # the reference's choice
