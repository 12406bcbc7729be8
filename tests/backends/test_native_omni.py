"""NativeBackend on a tiny random Qwen2.5-Omni checkpoint (float32), against transformers."""

from __future__ import annotations

import asyncio
import threading
import math

import numpy as np
import pytest
import torch

from omnilive.backends.native_omni import NativeBackend, pick_voice
from omnilive.backends.native_prompt import (
    FALLBACK_CHAT_TEMPLATE,
    SPEECH_SYSTEM_PROMPT,
    chat_template_of,
    load_omni_tokenizer,
)
from omnilive.types import (
    AudioChunk,
    EngineError,
    EngineRequest,
    Finished,
    ImageInput,
    Message,
    SamplingParams,
    TextDelta,
    VideoInput,
)
from omnilive.model.thinker import audio_placeholder_count
from omnilive.server.settings import Settings
from tests.backends.native_backend import collect, picture, run, started_backend, text_of, tone
from tests.backends.native_engine import Runner
from tests.model.omni_tiny import CHAT_TEMPLATE, TOKENS, build_tiny_omni

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
SEEDED = SamplingParams(temperature=0.7, max_tokens=10, seed=7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_omni(tmp_path_factory.mktemp("omni"), seed=1)


@pytest.fixture(scope="module")
def engine(tiny):
    yield from started_backend(tiny.directory, token2wav_steps=3)


IMAGE_QUESTION = (Message("user", ("What is in this picture?", ImageInput(picture()), "Answer briefly.")),)


def test_greedy_text_equals_transformers_thinker(engine, tiny):
    outputs = run(engine, EngineRequest("greedy", IMAGE_QUESTION, GREEDY))
    prompt = engine.model.processor.build(IMAGE_QUESTION)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        generated = tiny.thinker.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt.media.images.pixel_values,
            image_grid_thw=prompt.media.images.grid_thw, max_new_tokens=GREEDY.max_tokens, do_sample=False,
            eos_token_id=sorted(engine.model.tokenizer.stop_token_ids),
        )
    expected = generated[0, ids.shape[1]:].tolist()
    finished = outputs[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.completion_tokens == len(expected) >= 8  # a real sequence, not one stop token
    assert finished.usage.prompt_tokens == ids.shape[1]
    assert finished.usage.image_prompt_tokens == prompt.media.images.token_counts()[0] > 0
    shown = [t for t in expected if t not in engine.model.tokenizer.stop_token_ids]
    assert text_of(outputs) == engine.model.tokenizer.decode(shown, skip_special_tokens=True)


def test_prompt_layout_of_every_media_kind(engine):
    video = VideoInput(tuple(picture(seed) for seed in range(4)), fps=2.0, audio=tone(1.0))
    messages = (Message("user", (ImageInput(picture()), tone(0.5), video, "Describe them.")),)
    prompt = engine.model.processor.build(messages)
    ids = prompt.input_ids
    # a video with its own audio: <|vision_bos|><|audio_bos|> interleaved placeholders <|audio_eos|><|vision_eos|>
    start = ids.index(TOKENS["audio_start_token_id"], ids.index(TOKENS["video_token_index"]) - 1)
    assert ids[start - 1] == TOKENS["vision_start_token_id"]
    assert ids.count(TOKENS["audio_token_index"]) == audio_placeholder_count(50) + audio_placeholder_count(100)
    assert prompt.audio_tokens == ids.count(TOKENS["audio_token_index"])
    vision = ids.count(TOKENS["image_token_index"]) + ids.count(TOKENS["video_token_index"])
    assert prompt.image_tokens == vision == sum(prompt.media.images.token_counts()) + sum(prompt.media.videos.token_counts())
    assert prompt.media.audio_frames.tolist() == [50, 100]  # prompt order: the audio, then the video's
    assert prompt.media.video_seconds_per_grid == (1.0,)  # 2 frames per temporal patch at 2 fps
    outputs = run(engine, EngineRequest("media", messages, GREEDY))  # the thinker accepts the layout
    assert isinstance(outputs[-1], Finished) and outputs[-1].usage.prompt_tokens == len(ids)


def test_chat_template_and_system_prompts(engine, tiny, tmp_path):
    assert chat_template_of(tiny.directory) == CHAT_TEMPLATE
    assert chat_template_of(tmp_path) == FALLBACK_CHAT_TEMPLATE  # the same template, built in
    assert FALLBACK_CHAT_TEMPLATE == CHAT_TEMPLATE
    tokenizer = load_omni_tokenizer(tiny.directory)
    assert {tokenizer.encode(t)[0] for t in ("<|im_end|>", "<|endoftext|>")} == set(tokenizer.stop_token_ids)

    processor = engine.model.processor
    user_system = (Message("system", ("Be brief.",)), Message("user", ("Hi",)))
    spoken = tokenizer.render_chat(processor.chat(user_system, speak=True))
    assert spoken.startswith(f"<|im_start|>system\n{SPEECH_SYSTEM_PROMPT}\nBe brief.<|im_end|>\n")
    assert tokenizer.render_chat(processor.chat(user_system, speak=False)).startswith("<|im_start|>system\nBe brief.")
    default = tokenizer.render_chat(processor.chat(user_system[1:], speak=False))
    assert default.startswith(f"<|im_start|>system\n{SPEECH_SYSTEM_PROMPT}<|im_end|>")
    assert default.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_media_token_text_in_a_message_is_refused(engine):
    with pytest.raises(EngineError):
        engine.model.processor.build((Message("user", ("look: <|IMAGE|>",)),))


def test_speech_length_is_codes_times_upsampling(engine):
    request = EngineRequest("speech", IMAGE_QUESTION, SEEDED, modalities=("text", "audio"), voice="ethan")
    outputs = run(engine, request)
    kinds = [type(out).__name__ for out in outputs]
    assert kinds[-2:] == ["AudioChunk", "Finished"] and "TextDelta" in kinds
    chunks = [out for out in outputs if isinstance(out, AudioChunk)]
    assert "".join(c.transcript for c in chunks) == text_of(outputs)
    samples = np.concatenate([c.samples for c in chunks])

    # the same seeded request, step by step: thinker → talker codes → whole-reply token2wav
    settings = engine.settings
    runner = Runner(engine.model, settings.max_context_tokens, settings.prefill_chunk_tokens, engine.token2wav_steps)
    voice = engine.model.voices["Ethan"]
    prompt = engine.model.processor.build(IMAGE_QUESTION, speak=True)
    reply = runner.think(prompt, SEEDED, emit=lambda out: None, cancelled=lambda: False, keep_hidden=True)
    codes = runner.speech_codes(runner.codec_tokens(reply, voice, SEEDED.seed))
    config = engine.model.token2wav.config
    upsampling = config.dit_config.repeats * math.prod(config.bigvgan_config.upsample_rates)
    assert len(codes) > 0
    assert samples.dtype == np.float32 and samples.shape == (len(codes) * upsampling,)
    # streamed with Qwen's windowed schedule, which sees less look-ahead than the whole-reply
    # solve: close, not bit-equal (measured max 4e-4; the exact schedule is tested equal in
    # tests/backends/test_native_stream.py)
    assert np.allclose(samples, runner.waveform(codes, voice, SEEDED.seed), atol=1e-3)
    assert np.abs(samples).max() <= 1.0


def test_voices_by_name_and_unknown_voice(engine):
    assert engine.card.voices == ("Chelsie", "Ethan") and engine.card.default_voice == "Chelsie"
    assert pick_voice(engine.model.voices, "CHELSIE")[0] == "Chelsie"
    request = EngineRequest("voice", IMAGE_QUESTION, GREEDY, modalities=("text", "audio"), voice="nobody")
    with pytest.raises(EngineError) as error:
        run(engine, request)
    assert error.value.param == "voice"


def test_too_long_prompt_is_refused(engine):
    long_text = (Message("user", ("word " * 2000,)),)
    with pytest.raises(EngineError) as error:
        run(engine, EngineRequest("long", long_text, GREEDY))
    assert error.value.code == "context_length_exceeded"


def test_closing_the_stream_stops_the_request(engine):
    forwards = []
    hook = engine.model.thinker.register_forward_hook(lambda *_: forwards.append(1))

    async def first_delta_then_close():
        long_request = EngineRequest("closed", IMAGE_QUESTION, SamplingParams(temperature=0.0, max_tokens=800))
        stream = engine.generate(long_request)
        async for out in stream:
            if isinstance(out, TextDelta):
                break
        await stream.aclose()
        # the abandoned request leaves the batch at the engine's next step; this one runs on
        return [out async for out in engine.generate(EngineRequest("after", IMAGE_QUESTION, GREEDY))]

    try:
        outputs = asyncio.run(asyncio.wait_for(first_delta_then_close(), timeout=60))
    finally:
        hook.remove()
    assert isinstance(outputs[-1], Finished) and outputs[-1].finish_reason in ("stop", "length")
    prefill_chunks = 2 * math.ceil(outputs[-1].usage.prompt_tokens / engine.settings.prefill_chunk_tokens)
    assert len(forwards) < prefill_chunks + GREEDY.max_tokens + 20  # far from the 800 tokens asked for


def test_media_are_encoded_off_the_step_loop_while_others_stream(engine):
    """A request with a large image joins one that is streaming: the vision tower runs on the
    prompt worker, never on the engine thread every stream waits on, and both replies are
    what each gives alone."""
    streaming = EngineRequest("streaming", (Message("user", ("Tell me a long story about the sea.",)),),
                              SamplingParams(temperature=0.0, max_tokens=60))
    joining = EngineRequest("joining", (Message("user", ("What is in this picture?",
                                                         ImageInput(picture(3, (448, 336))))),), GREEDY)
    encoded_on: list[str] = []
    hooks = [tower.register_forward_hook(lambda *_: encoded_on.append(threading.current_thread().name))
             for tower in (engine.model.thinker.visual, engine.model.thinker.audio_tower)]

    async def together():
        first: list = []
        stream = engine.generate(streaming)
        async for out in stream:
            first.append(out)
            if sum(isinstance(o, TextDelta) for o in first) == 2:  # it streams: now the image joins
                second = asyncio.create_task(collect(engine, joining))
                break
        first += [out async for out in stream]
        return first, await second

    try:
        first, second = asyncio.run(together())
    finally:
        for hook in hooks:
            hook.remove()
    assert encoded_on and "omnilive-llm-engine" not in encoded_on  # the image was encoded, off the loop
    assert text_of(first) == text_of(run(engine, streaming)) and first[-1].usage.completion_tokens == 60
    assert text_of(second) == text_of(run(engine, joining)) and second[-1].usage.image_prompt_tokens > 0


def test_speech_options_come_from_the_settings(tiny):
    settings = Settings(model=str(tiny.directory), dtype="float32", threads=1, max_context_tokens=256,
                        token2wav_steps=6, token2wav_first_chunk_steps=3, speech_dtype="bfloat16")
    engine = NativeBackend(settings)
    asyncio.run(engine.start())
    try:
        speech = engine.engine.speech.settings
        assert (speech.token2wav_steps, speech.first_chunk_steps, speech.dit_dtype) == (6, 3, torch.bfloat16)
    finally:
        asyncio.run(engine.stop())
    assert Settings(model=str(tiny.directory)).speech_dtype == "auto"  # float32 model: float32 DiT (the fixture)
