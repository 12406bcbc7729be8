"""The native engine on a tiny random Qwen3-Omni checkpoint (float32), against transformers'
generate: greedy replies equal for text, image, audio, video and video with its audio, with
prefill chunks of 16 tokens that cut through the media (DeepStack rows and the merged video/audio
run); requests stepped together equal each alone; a second turn reuses the KV blocks and encoder
rows of the first. Speech: with a greedy talker the streamed audio equals transformers' whole
generate (thinker, talker, code predictor, Code2Wav), for text and for an audio question (the
talker then reads the thinker's hidden states of the audio); seeded speech is the same batched."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from omnilive.backends.native_qwen3_omni import Qwen3OmniProcessor
from omnilive.engine import qwen3_speech
from omnilive.engine.qwen3_speech import Qwen3SpeechSettings
from omnilive.engine.qwen3_talker_generate import (
    QWEN3_PREDICTOR_GREEDY,
    QWEN3_TALKER_GREEDY,
)
from omnilive.model.qwen3_omni import Qwen3OmniThinker
from omnilive.model.qwen3_omni_code2wav import decode_joined
from omnilive.types import (
    AudioChunk,
    EngineError,
    EngineRequest,
    Finished,
    ImageInput,
    Message,
    SamplingParams,
)
from tests.backends.native_backend import (
    clip,
    picture,
    reference_greedy,
    run,
    started_backend,
    text_of,
    tone,
    vision_kwargs,
)
from tests.model.parity import padded_audio_features
from tests.model.qwen3_omni_tiny import build_tiny_qwen3_omni

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


MESSAGES = {
    "text": (Message("user", ("What is in this picture?",)),),
    "image": (Message("user", ("What is in this?", ImageInput(picture(0, (90, 60))), "Answer briefly.")),),
    "audio": (Message("user", ("Listen:", tone(2.3, 440, amplitude=0.3), "What is it?")),),
    "video": (Message("user", ("What happens?", clip(frames=5))),),
    "video_with_audio": (Message("user", ("What happens?", clip(frames=6, audio=tone(3.0, 220, amplitude=0.3)))),),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3_omni"), seed=6, with_tokenizer=True)


@pytest.fixture(scope="module")
def engine(tiny):
    yield from started_backend(tiny.directory)


def reference_tokens(tiny, engine, messages) -> list[int]:
    """transformers' thinker, greedy, on our processor's inputs (equal to transformers' processor's:
    tests/media/test_qwen3_omni_processor.py)."""
    ids, kwargs = reference_inputs(engine, messages)
    return reference_greedy(tiny.thinker, engine, ids, kwargs, GREEDY.max_tokens)


def reference_inputs(engine, messages) -> tuple[torch.Tensor, dict]:
    """transformers' input ids and media keyword arguments for our processor's prompt."""
    prompt = engine.model.processor.build(messages)
    media = prompt.media
    ids = torch.tensor([prompt.input_ids])
    kwargs = vision_kwargs(media)
    if media.videos is not None:
        kwargs["video_second_per_grid"] = torch.tensor(media.video_seconds_per_grid)
    if media.audio_mel is not None:
        frames = media.audio_frames.tolist()
        kwargs |= padded_audio_features(media.audio_mel.split(frames, dim=1), frames)
    config = engine.model.thinker.thinker_config
    marks = [config.vision_start_token_id, config.audio_start_token_id]  # a video with its audio
    kwargs["use_audio_in_video"] = any(list(pair) == marks for pair in zip(prompt.input_ids, prompt.input_ids[1:]))
    return ids, kwargs


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_greedy_reply_equals_transformers_generate(engine, tiny, case):
    messages = MESSAGES[case]
    expected = reference_tokens(tiny, engine, messages)
    outputs = run(engine, EngineRequest(case, messages, GREEDY))
    finished = outputs[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.completion_tokens == len(expected)
    tokenizer = engine.model.tokenizer
    shown = [t for t in expected if t not in tokenizer.stop_token_ids]
    assert len(set(shown)) > 1  # not one token repeated: the comparison means something
    assert text_of(outputs) == tokenizer.decode(shown, skip_special_tokens=True)


def test_requests_stepped_together_equal_each_alone(engine):
    alone = {case: text_of(run(engine, EngineRequest(case, messages, GREEDY))) for case, messages in MESSAGES.items()}

    async def together():
        async def one(case):
            request = EngineRequest(f"{case}-b", MESSAGES[case], GREEDY)
            return case, text_of([out async for out in engine.generate(request)])

        return dict(await asyncio.gather(*(one(case) for case in MESSAGES)))

    assert asyncio.run(together()) == alone


def test_loaded_as_qwen3_omni_with_its_voices(engine):
    assert isinstance(engine.model.thinker, Qwen3OmniThinker)
    assert isinstance(engine.model.processor, Qwen3OmniProcessor)
    assert engine.model.family == "Qwen3-Omni" and engine.model.talker is not None
    assert engine.card.output_modalities == ("text", "audio")
    assert engine.card.voices == ("Chelsie", "Ethan") and engine.card.default_voice == "Chelsie"
    assert [part["role"] for part in engine.card.parts] == ["thinker", "talker", "code2wav"]
    assert engine.model.processor.input_modalities == ("text", "image", "audio", "video")


def test_a_second_turn_reuses_cached_blocks_and_encoder_rows_and_replies_as_transformers(engine, tiny):
    first_turn = MESSAGES["audio"]
    said = text_of(run(engine, EngineRequest("turn-1", first_turn, GREEDY)))
    second_turn = (*first_turn, Message("assistant", (said,)),
                   Message("user", ("And this?", ImageInput(picture(9, (128, 64))))))
    hits = engine.media_cache.hits
    outputs = run(engine, EngineRequest("turn-2", second_turn, GREEDY))
    assert engine.media_cache.hits == hits + 1  # the first turn's audio was not encoded again
    assert outputs[-1].usage.cached_prompt_tokens >= 16
    tokenizer = engine.model.tokenizer
    expected = [t for t in reference_tokens(tiny, engine, second_turn) if t not in tokenizer.stop_token_ids]
    assert text_of(outputs) == tokenizer.decode(expected, skip_special_tokens=True)


SPEECH_FRAMES = 12
CODEBOOK, TALKER_VOCAB, CODEC_EOS = 16, 48, 40  # tests/model/qwen3_omni_tiny.py


def speak_greedily(engine) -> None:
    """The engine's talker and code predictor greedy (as transformers' talker_do_sample=False),
    at most SPEECH_FRAMES frames; small Code2Wav chunks, so the audio comes in many pieces."""
    engine.engine.speech.settings = engine.whole_speech.settings = Qwen3SpeechSettings(
        chunk_frames=3, first_chunk_frames=1, talker_sampling=QWEN3_TALKER_GREEDY,
        predictor_sampling=QWEN3_PREDICTOR_GREEDY, talker_max_new_tokens=SPEECH_FRAMES)


def spoken(outputs) -> tuple[np.ndarray, int]:
    chunks = [out for out in outputs if isinstance(out, AudioChunk)]
    return np.concatenate([chunk.samples for chunk in chunks]), len(chunks)


@pytest.mark.parametrize("case", ["text", "audio"])
def test_greedy_speech_streamed_equals_transformers_whole_generate(engine, tiny, case):
    speak_greedily(engine)
    outputs = run(engine, EngineRequest(f"speak-{case}", MESSAGES[case], GREEDY, modalities=("text", "audio"),
                                        voice="chelsie"))
    audio, pieces = spoken(outputs)
    ids, kwargs = reference_inputs(engine, MESSAGES[case])
    tiny.thinker.model.rope_deltas = tiny.model.talker.rope_deltas = None
    with torch.no_grad():
        _, wav = tiny.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), speaker="chelsie",
            thinker_max_new_tokens=GREEDY.max_tokens, thinker_do_sample=False,
            thinker_eos_token_id=sorted(engine.model.tokenizer.stop_token_ids), talker_do_sample=False,
            talker_max_new_tokens=SPEECH_FRAMES,
            talker_suppress_tokens=[t for t in range(CODEBOOK, TALKER_VOCAB) if t != CODEC_EOS], **kwargs)
    expected = wav.reshape(-1).numpy()
    assert pieces > 2 and len(expected) > 8 * 8  # streamed in pieces, several frames long
    assert audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-4)


def test_seeded_speech_is_the_same_batched_and_alone(engine, monkeypatch):
    """Stepped together, the streams' talker steps and their Code2Wav chunks run as batches.
    The talker's frames are the same (else the audio would differ wholesale); the joined Code2Wav
    GEMMs round differently in float32 (joined == alone exactly in float64:
    tests/model/test_qwen3_omni_code2wav.py)."""
    joined = []

    def spy(model, codes, streams):
        joined.append(len(codes))
        return decode_joined(model, codes, streams)

    monkeypatch.setattr(qwen3_speech, "decode_joined", spy)
    engine.engine.speech.settings = engine.whole_speech.settings = Qwen3SpeechSettings(chunk_frames=2,
                                                                                       talker_max_new_tokens=8)
    seeded = SamplingParams(temperature=0.8, max_tokens=6, seed=5)
    requests = [EngineRequest(f"seeded-{case}-{voice}", MESSAGES[case], seeded, modalities=("text", "audio"),
                              voice=voice)
                for case, voice in (("text", "Ethan"), ("image", "Chelsie"), ("text", "Chelsie"))]
    alone = [spoken(run(engine, request))[0] for request in requests]

    async def together():
        async def one(request):
            return spoken([out async for out in engine.generate(request)])[0]

        return await asyncio.gather(*(one(request) for request in requests))

    joined.clear()
    for got, expected in zip(asyncio.run(together()), alone):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert all(len(samples) > 0 for samples in alone)
    assert max(joined) >= 2  # some chunks of the streams were decoded as one batch


def test_unknown_voice_is_a_clear_error(engine):
    with pytest.raises(EngineError, match="unknown voice"):
        run(engine, EngineRequest("nobody", MESSAGES["text"], GREEDY, modalities=("text", "audio"), voice="nobody"))


def test_dictated_speech_equals_transformers_generate_with_that_reply(engine, tiny):
    """/v1/audio/speech's path: the talker speaks a text we give, as transformers' generate
    speaks a thinker reply of exactly those tokens (its thinker replaced by one that returns them)."""
    from types import SimpleNamespace

    speak_greedily(engine)
    text = "Hello there, how are you?"
    prompt = engine.model.processor.build((Message("user", ("Say: " + text,)),), True)
    samples = engine.whole_speech.speak_text(prompt, text, engine.model.voices["Ethan"])
    reply = engine.model.tokenizer.encode(text)
    ids = torch.tensor([prompt.input_ids])
    eos = min(engine.model.tokenizer.stop_token_ids)
    sequence = torch.tensor([[*prompt.input_ids, *reply, eos]])

    def thinker_generate(**kwargs):
        with torch.no_grad():
            states = tiny.thinker(input_ids=sequence[:, :-1], output_hidden_states=True).hidden_states
        return SimpleNamespace(sequences=sequence, hidden_states=[states])

    tiny.model.thinker.generate, tiny.model.talker.rope_deltas = thinker_generate, None
    try:
        with torch.no_grad():
            _, wav = tiny.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), speaker="ethan", thinker_eos_token_id=[eos],
                talker_do_sample=False, talker_max_new_tokens=SPEECH_FRAMES,
                talker_suppress_tokens=[t for t in range(CODEBOOK, TALKER_VOCAB) if t != CODEC_EOS])
    finally:
        del tiny.model.thinker.generate
    expected = wav.reshape(-1).numpy()
    assert len(reply) > 3 and len(expected) > 8 * 8
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-4)


def test_quantize_int8_serves_int8_experts_and_speaks(tiny):
    """OMNILIVE_QUANTIZE=int8 reaches the loaders: thinker and talker experts in int8, and the
    backend still answers and speaks."""
    from omnilive.backends.native_omni import NativeBackend
    from omnilive.model.moe_int8 import Int8Experts
    from omnilive.server.settings import Settings

    settings = Settings(model=str(tiny.directory), dtype="float32", threads=1, max_context_tokens=1024,
                        quantize="int8")
    backend = NativeBackend(settings)
    asyncio.run(backend.start())
    try:
        for part in (backend.model.thinker, backend.model.talker):
            assert sum(isinstance(m, Int8Experts) for m in part.modules()) == 2
        request = EngineRequest("int8", MESSAGES["text"], GREEDY, modalities=("text", "audio"))
        outputs = run(backend, request)
        assert text_of(outputs) and any(isinstance(out, AudioChunk) for out in outputs)
    finally:
        asyncio.run(backend.stop())


def test_code2wav_dtype_follows_the_speech_dtype_setting():
    from omnilive.backends.native_qwen3_omni import code2wav_dtype

    assert code2wav_dtype("auto") == torch.float32  # bf16's cost not yet measured on real weights
    assert code2wav_dtype("bfloat16") == torch.bfloat16
    assert code2wav_dtype("float32") == torch.float32
