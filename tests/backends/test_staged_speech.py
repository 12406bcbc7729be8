"""The speech stage split off the thinker (`--stages`), in one process: a thinker engine that
exports its spoken requests' feeds (LLMEngine(export_speech=True)) and a SpeechEngine that
speaks them must give what the single engine gives: the same text, the same audio samples and
transcript, the same usage; for Qwen2.5-Omni (the talker reads final hidden states of the
prompt and reply) and Qwen3-Omni (a middle layer's states of the prompt, the reply's
embeddings). (tests/server/test_scale_out_stages.py runs the halves as Ray Serve deployments.)"""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
import torch

from omnilive.backends.native_omni import NativeBackend, load_speech_engine
from omnilive.types import AudioChunk, AudioInput, EngineRequest, Finished, Message, SamplingParams, TextDelta
from omnilive.server.settings import Settings
from tests.model.omni_tiny import build_tiny_omni
from tests.model.qwen3_omni_tiny import build_tiny_qwen3_omni

pytest.importorskip("transformers")

QUESTION = (Message("user", ("Say something about the sea.",)),)
# a question with user media: the talker reads the thinker's states of the audio's placeholders
TONE = AudioInput((0.3 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)).astype(np.float32))
AUDIO_QUESTION = (Message("user", (TONE, "What do you hear?")),)


@pytest.fixture(scope="module", params=["qwen2.5-omni", "qwen3-omni"])
def settings(request, tmp_path_factory):
    if request.param == "qwen3-omni":
        tiny = build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3-omni"), seed=6, with_tokenizer=True)
    else:
        tiny = build_tiny_omni(tmp_path_factory.mktemp("omni"), seed=1)
    return Settings(model=str(tiny.directory), dtype="float32", threads=1, max_context_tokens=512,
                    prefill_chunk_tokens=16)


def backend(settings, staged: bool) -> NativeBackend:
    service = load_speech_engine(settings, token2wav_steps=3) if staged else None
    engine = NativeBackend(settings, token2wav_steps=3, speech_service=service)
    asyncio.run(engine.start())
    return engine


def reply(engine: NativeBackend, request: EngineRequest) -> tuple[str, np.ndarray, str, Finished]:
    async def collect():
        return [out async for out in engine.generate(request)]

    outputs = asyncio.run(collect())
    chunks = [out for out in outputs if isinstance(out, AudioChunk)]
    samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    assert isinstance(outputs[-1], Finished)
    return ("".join(out.text for out in outputs if isinstance(out, TextDelta)), samples,
            "".join(c.transcript for c in chunks), outputs[-1])


@pytest.mark.parametrize(("messages", "sampling"), [
    (QUESTION, SamplingParams(temperature=0.0, max_tokens=20, seed=3)),
    (QUESTION, SamplingParams(temperature=0.0, max_tokens=1, seed=3)),
    (AUDIO_QUESTION, SamplingParams(temperature=0.0, max_tokens=12, seed=3))], ids=["reply", "one-token", "audio"])
def test_split_stages_speak_as_the_single_engine(settings, messages, sampling):
    request = EngineRequest("spoken", messages, sampling, modalities=("text", "audio"), voice="Ethan")
    single, staged = backend(settings, staged=False), backend(settings, staged=True)
    try:
        assert staged.engine.speech.talker_cache is None  # no talker on the thinker's side
        text, samples, transcript, finished = reply(single, request)
        text_s, samples_s, transcript_s, finished_s = reply(staged, request)
    finally:
        for engine in (single, staged):
            asyncio.run(engine.stop())
            if engine.speech_service is not None:
                engine.speech_service.shutdown()
    assert text_s == text and finished_s == finished
    assert transcript_s == transcript
    assert len(samples_s) == len(samples) and np.array_equal(samples_s, samples)
    if sampling.max_tokens > 1:
        assert len(samples) > 0 and transcript == text


def test_a_reply_closed_early_frees_its_speech(settings):
    """A client that leaves mid-reply: the thinker request is aborted and the speech engine
    drops the request and gives its talker row back."""
    staged = backend(settings, staged=True)
    request = EngineRequest("leaving", QUESTION, SamplingParams(temperature=0.0, max_tokens=200, seed=3),
                            modalities=("text", "audio"), voice="Ethan")

    async def first_audio_then_close() -> None:
        outputs = staged.generate(request)
        async for out in outputs:
            if isinstance(out, AudioChunk):
                break
        await outputs.aclose()

    try:
        asyncio.run(first_audio_then_close())
        speech = staged.speech_service.engine
        talker_rows = speech.stage.talker_cache
        for _ in range(100):  # the abort is a command the engine threads run between steps
            if not speech.jobs and talker_rows.num_free == talker_rows.max_slots:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert not speech.jobs and talker_rows.num_free == talker_rows.max_slots
        assert staged.engine.find("leaving") is None
    finally:
        asyncio.run(staged.stop())
        staged.speech_service.shutdown()


def test_a_feed_moves_every_tensor_it_carries(settings):
    """Feeds cross processes on the CPU and go to the talker's device on arrival (server/
    scale_out_stages.py): every tensor must move, the prompt's and the voice's too."""
    from omnilive.engine.speech_export import ExportedSpeech
    from omnilive.model.rope_index import PromptPositions
    from omnilive.model.thinker import ThinkerPrompt
    from omnilive.model.token2wav import Voice

    voice = Voice(torch.zeros(1, 4), torch.zeros(1, 3, 5), bos_token=7)
    recorded = ExportedSpeech(voice, seed=1)
    prompt = ThinkerPrompt(torch.arange(3), torch.zeros(3, 8), PromptPositions(torch.zeros(3, 3, dtype=torch.long), 0))
    recorded.start(prompt, torch.zeros(3, 8))
    recorded.add_reply_token(torch.zeros(8), torch.zeros(8))
    feed = recorded.take().to("meta")
    start = feed.start
    tensors = [start.prompt.input_ids, start.prompt.embeds, start.prompt.rope.positions, start.prompt_hidden,
               start.voice.speaker_embedding, start.voice.reference_mel, feed.reply_hidden, feed.reply_embeds]
    assert all(t.device.type == "meta" for t in tensors)
    assert start.voice.bos_token == 7 and start.seed == 1 and feed.reply_tokens == 1 and not feed.ended


def test_a_qwen3_feed_carries_embeddings_only():
    """Qwen3-Omni's talker reads no reply hidden states: its feeds carry the embeddings alone,
    and its voice (a codec id) moves as it is."""
    from omnilive.engine.speech_export import ExportedSpeech, joined_feeds
    from omnilive.model.qwen3_omni_talker import Qwen3Voice
    from omnilive.model.rope_index import PromptPositions
    from omnilive.model.thinker import ThinkerPrompt

    recorded = ExportedSpeech(Qwen3Voice("Ethan", 5), seed=None)
    prompt = ThinkerPrompt(torch.arange(3), torch.zeros(3, 8), PromptPositions(torch.zeros(3, 3, dtype=torch.long), 0))
    recorded.start(prompt, torch.zeros(3, 8))
    recorded.add_reply_token(None, torch.ones(8))
    first = recorded.take()
    recorded.add_reply_token(None, torch.full((8,), 2.0))
    recorded.finish_text()
    feed = joined_feeds([first, recorded.take()]).to("meta")
    assert feed.reply_hidden is None and feed.reply_tokens == 2 and feed.ended
    assert feed.reply_embeds.device.type == "meta" and feed.start.voice == Qwen3Voice("Ethan", 5)
    assert feed.reply_token(1)[0] is None


def test_a_speech_replica_reads_no_thinker_weight_but_its_token_embeddings(settings, tmp_path):
    """What load_speech_engine loads: with every other thinker tensor gone from the checkpoint,
    the talker, vocoder and the thinker's token embeddings still load, the embeddings and the
    context length those of the whole model."""
    from safetensors.torch import load_file, save_file

    from omnilive.backends.native_omni import load_omni
    from omnilive.backends.speech_parts import THINKER_EMBED_PREFIX, load_speaking_parts

    lean = tmp_path / "lean"
    shutil.copytree(settings.model, lean)
    dropped = 0
    for shard in lean.glob("*.safetensors"):
        tensors = load_file(shard)
        kept = {key: t for key, t in tensors.items()
                if not key.startswith("thinker.") or key.startswith(THINKER_EMBED_PREFIX)}
        dropped += len(tensors) - len(kept)
        save_file(kept, shard, metadata={"format": "pt"})
    assert dropped > 10  # the thinker's decoder and encoders
    parts = load_speaking_parts(lean, torch.float32, "cpu")
    whole = load_omni(settings.model, "float32")
    assert torch.equal(parts.thinker_embed.weight, whole.thinker.model.embed_tokens.weight)
    assert parts.context_length == whole.thinker.config.max_position_embeddings
    assert type(parts.talker) is type(whole.talker) and type(parts.vocoder) is type(whole.token2wav)
