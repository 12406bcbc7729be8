"""The embedded default, "omnilive-small": an omni model assembled from small packaged models.

    audio  ──Whisper base──▶ transcript ─┐
    image  ──OCR, colours──▶ context ────┼─▶ Qwen2.5-Coder-0.5B on our Qwen2 decoder ─▶ text
    video  ──frames + audio track──▶ ────┘                                │
                                               sentence chunks ──hibari──▶ 24 kHz speech

Each stage streams: speech for the first clause is synthesised while the LLM is still
writing the rest. Media become text that is clearly labelled as machine-extracted, so the
model (and the user reading its answer) knows what it could and could not "see".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, AsyncIterator, Sequence

import numpy as np
import torch

from omnilive.backends.tool_prompt import template_entry, with_tools
from omnilive.backends.tts import SynthesisQueue
from omnilive.engine.async_engine import engine_outputs
from omnilive.engine.speech_chunker import SpeechChunker
from omnilive.engine.tool_calls import output_format
from omnilive.engine.torch_threads import run_in_fresh_thread
from omnilive.types import (
    ASR_SAMPLE_RATE,
    AudioChunk,
    AudioInput,
    EngineError,
    EngineOutput,
    EngineRequest,
    Finished,
    ImageInput,
    Message,
    ModelCard,
    ReasoningDelta,
    SamplingParams,
    TextDelta,
    Transcript,
    Usage,
    VideoInput,
)

if TYPE_CHECKING:
    from omnilive.backends.load_progress import ModelProgress

log = logging.getLogger(__name__)

MODEL_ID = "omnilive-small"
SYSTEM_PROMPT = (
    "You are omnilive, a helpful assistant running locally. You read text only: images, audio "
    "and video the user attaches reach you as text extracted by other tools (speech recognition, "
    "OCR, colour analysis), shown in square brackets. Use that text to answer, and say so when "
    "it does not tell you what you are asked. When the user's message is an audio transcript, "
    "treat it as what the user said."
)
SPOKEN_STYLE = (
    " Your reply will be spoken aloud: answer in a few short, plain sentences, without "
    "markdown, lists, tables or code."
)
FRAMES_DESCRIBED_PER_VIDEO = 3  # OCR is the costly part; a few spread-out frames carry most text


class EmbeddedBackend:
    """Backend over packaged models; loads lazily in `start()`."""

    def __init__(self, settings):
        self.settings = settings
        self._llm = None  # AsyncLLM
        self._tokenizer = None
        self._asr = None
        self._tts = None
        self._context_length = 0
        # One thread each: Whisper and hibari are not re-entrant, and two threads per stage
        # would only fight the LLM thread for the machine's few cores.
        self._asr_pool = ThreadPoolExecutor(1, thread_name_prefix="asr")
        self._speech = SynthesisQueue()  # first clauses of replies before later ones
        self._vision_pool = ThreadPoolExecutor(1, thread_name_prefix="vision")
        self._media_text: OrderedDict[str, str] = OrderedDict()  # media digest → its text
        self._card: ModelCard | None = None

    @property
    def card(self) -> ModelCard:
        if self._card is None:
            raise RuntimeError("engine not started")
        return self._card

    async def start(self) -> None:
        await run_in_fresh_thread(self._load)  # torch stays on the engine thread afterwards

    def _load(self) -> None:
        from omnilive.backends import assets, vision
        from omnilive.backends.load_progress import LoadProgress

        t0 = time.perf_counter()
        with LoadProgress() as progress:
            with progress.model(self.settings.llm, in_parts=self.settings.llm != "smollm2-135m") as line:
                self._load_llm(line)
            with progress.model("whisper-base", in_parts=True) as line:
                self._load_asr(line)
            with progress.model("hibari-tts") as line:
                self._load_tts(line)
            with progress.model("rapidocr") as line:
                line.step("loading")
                vision.warm_up()
        log.info("embedded default loaded in %.1f s", time.perf_counter() - t0)
        unused_llm_role = "llm" if self.settings.llm == "smollm2-135m" else "llm-small"
        self._card = ModelCard(
            id=MODEL_ID,
            owned_by="omnilive",
            parts=tuple(p for p in assets.packaged_parts() if p["role"] != unused_llm_role),
            context_length=self._context_length,
            voices=tuple(self._tts.voices),
            default_voice=self._tts.default_voice,
        )

    def _load_llm(self, line: ModelProgress) -> None:
        from omnilive.backends import assets
        from omnilive.engine.async_engine import AsyncLLM
        from omnilive.engine.llm_engine import LLMEngine
        from omnilive.model.gguf_loader import load_gguf
        from omnilive.model.packed import can_pack
        from omnilive.model.quant_linear import kernel_isa
        from omnilive.model.weights import pick_compute_dtype, resolve_dtype

        s = self.settings
        cache_dir = s.models_dir
        small = s.llm == "smollm2-135m"
        gguf_path = assets.smollm2_gguf() if small else assets.qwen_coder_gguf(cache_dir, on_bytes=line.assembling)
        torch.set_num_threads(s.threads)
        dtype = resolve_dtype(s.dtype)
        # auto: the GGUF's own quantised weights on our kernel (faster than any float path,
        # docs/benchmarks.md) where it builds and runs; without it bf16 weights packed for
        # oneDNN where the CPU runs bf16 natively, else int8 in bf16
        if s.quantize in ("auto", "gguf"):
            line.step("preparing the quantised matmul kernel (compiled once, then cached)")
        quantized = s.quantize in ("auto", "gguf") and kernel_isa() is not None  # logs why not
        auto_int8 = dtype == torch.bfloat16 and not can_pack(dtype, "cpu")
        int8 = not quantized and (s.quantize == "int8" or (s.quantize == "auto" and auto_int8))
        line.step("loading weights (converted into the cache on a first start)")
        # auto: prompts on a float copy (bf16 where AMX multiplies it, else float32), for 0.7-1.4 GB
        # more memory: a 498-token prompt's first token in 0.61 s instead of 4.31 s on the kernel
        # (AMX Xeon, docs/benchmarks.md)
        prompt_dtype = pick_compute_dtype() if quantized and s.quantize == "auto" else None
        model, config, tokenizer = load_gguf(gguf_path, cache_dir=cache_dir, dtype=dtype, int8_weights=int8,
                                             quantized=quantized, prompt_dtype=prompt_dtype)
        self._tokenizer = tokenizer
        self._context_length = min(config.max_position_embeddings, s.max_context_tokens)
        engine = LLMEngine(
            model,
            tokenizer,
            max_slots=s.max_batch,
            context_length=self._context_length,
            prefill_chunk_tokens=s.prefill_chunk_tokens,
        )
        # warm-ups (here and below), so the first voice turn costs what later ones do: the spoken
        # system prompt's keys/values stay in cached KV blocks for prefix reuse
        line.step("warming up")
        warm_chat = [{"role": "system", "content": SYSTEM_PROMPT + SPOKEN_STYLE}, {"role": "user", "content": "Hi"}]
        engine.add_request("warm-up", tokenizer.apply_chat_template(warm_chat, add_generation_prompt=True),
                           SamplingParams(max_tokens=1))
        while engine.has_work():
            engine.step()
        self._llm = AsyncLLM(engine, threads=s.threads)

    def _load_asr(self, line: ModelProgress) -> None:
        from omnilive.backends import assets
        from omnilive.backends.asr import WhisperASR

        model_dir = assets.whisper_base_dir(self.settings.models_dir, on_bytes=line.assembling)
        line.step("loading")
        self._asr = WhisperASR(model_dir, cpu_threads=self.settings.threads)
        line.step("warming up")  # silence makes Whisper run both encoder windows
        self._asr.transcribe(AudioInput(np.zeros(ASR_SAMPLE_RATE, np.float32)), language="en")

    def _load_tts(self, line: ModelProgress) -> None:
        from omnilive.backends.tts import HibariTTS

        line.step("loading")
        self._tts = HibariTTS()
        line.step("warming up")  # the default voice's G2P and ONNX sessions load
        self._tts.synthesize("Hello there.")

    async def stop(self) -> None:
        if self._llm is not None:
            await asyncio.to_thread(self._llm.shutdown)
        for pool in (self._asr_pool, self._vision_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self._speech.shutdown()

    # -- requests ---------------------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        speak = "audio" in request.modalities
        voice = self._check_voice(request.voice) if speak else None
        messages, tool_variables = with_tools(request.messages, request.offered_tools, self._tokenizer.info.chat_template)
        chat = await self._render_chat(messages, speak)
        prompt_ids = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, **tool_variables,
                                                         **dict(request.chat_template_kwargs))
        sampling = request.sampling  # the engine refuses a prompt or max_tokens beyond the context
        text_stream = self._llm.generate(request.request_id, prompt_ids, sampling, request.max_thinking_tokens,
                                         min_thinking_tokens=request.min_thinking_tokens,
                                         output=output_format(request.tools, request.tool_choice,
                                                              request.response_format))
        if not speak:
            async for out in engine_outputs(text_stream):
                yield out
            return
        async for out in self._with_speech(engine_outputs(text_stream), voice):
            yield out

    async def _with_speech(self, outputs: AsyncIterator[EngineOutput], voice: str) -> AsyncIterator[EngineOutput]:
        """Interleave text outputs with speech of each finished clause, as soon as it is ready."""
        merged: asyncio.Queue = asyncio.Queue()
        to_speak: asyncio.Queue[str | None] = asyncio.Queue()
        chunker = SpeechChunker()

        async def read_text():
            async for out in outputs:
                if isinstance(out, TextDelta):
                    for piece in chunker.feed(out.text):
                        to_speak.put_nowait(piece)
                if isinstance(out, Finished):
                    for piece in chunker.flush():
                        to_speak.put_nowait(piece)
                    to_speak.put_nowait(None)
                    finished.append(out)
                    continue
                await merged.put(out)

        async def speak():
            priority = SynthesisQueue.FIRST
            while (piece := await to_speak.get()) is not None:
                samples = await self._synthesize(priority, piece, voice)
                priority = SynthesisQueue.LATER
                await merged.put(AudioChunk(np.asarray(samples, dtype=np.float32), piece))

        finished: list[Finished] = []
        reader, speaker = asyncio.create_task(read_text()), asyncio.create_task(speak())
        done_marker = object()
        both = asyncio.gather(reader, speaker)
        both.add_done_callback(lambda _: merged.put_nowait(done_marker))
        try:
            ended = False
            while not ended:
                ready = [await merged.get()]
                while not merged.empty():  # a reader that fell behind catches up in one delta
                    ready.append(merged.get_nowait())
                for item in _text_runs_joined(ready):
                    if item is done_marker:
                        ended = True
                        break
                    yield item
            await both  # re-raise a failure of either stage
            yield finished[0]
        finally:
            for task in (reader, speaker):
                task.cancel()
            with contextlib.suppress(BaseException):
                await both
            await outputs.aclose()

    def count_tokens(self, messages: Sequence[Message]) -> int:
        chat = [{"role": m.role, "content": m.text} for m in messages]
        return len(self._tokenizer.apply_chat_template(chat, add_generation_prompt=True))

    async def transcribe(self, audio: AudioInput, language: str | None = None, prompt: str | None = None) -> Transcript:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._asr_pool, self._asr.transcribe, audio, language, prompt)

    async def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> AsyncIterator[np.ndarray]:
        voice = self._check_voice(voice)
        chunker = SpeechChunker()
        for i, piece in enumerate(chunker.feed(text) + chunker.flush()):
            yield await self._synthesize(SynthesisQueue.LATER if i else SynthesisQueue.FIRST, piece, voice, speed)

    async def _synthesize(self, priority: int, text: str, voice: str, speed: float = 1.0) -> np.ndarray:
        future = self._speech.submit(priority, self._tts.synthesize, text, voice, speed)
        try:
            return await asyncio.wrap_future(future)
        finally:
            future.cancel()  # a reply that is gone does not need its clause (no-op once running)

    def _check_voice(self, voice: str | None) -> str:
        return self._tts.resolve_voice(voice)  # EngineError for a voice it cannot speak

    # -- media → labelled text ----------------------------------------------------------------

    async def _render_chat(self, messages: Sequence[Message], speak: bool) -> list[dict]:
        chat: list[dict] = []
        counters = {"image": 0, "audio": 0, "video": 0}
        for message in messages:
            # media descriptions first, then the words: small models answer the question that
            # comes last instead of echoing the description back
            media = [await self._part_text(p, counters) for p in message.content if not isinstance(p, str)]
            words = [p for p in message.content if isinstance(p, str)]
            chat.append(template_entry(message, "\n".join(x for x in media + words if x)))
        system = SYSTEM_PROMPT + (SPOKEN_STYLE if speak else "")
        if chat and chat[0]["role"] == "system":
            chat[0]["content"] = chat[0]["content"] + (SPOKEN_STYLE if speak else "")
        else:
            chat.insert(0, {"role": "system", "content": system})
        return chat

    async def _part_text(self, part, counters: dict[str, int]) -> str:
        if isinstance(part, str):
            return part
        kind = {ImageInput: "image", AudioInput: "audio", VideoInput: "video"}[type(part)]
        counters[kind] += 1
        key = f"{kind}:{_digest(part)}"
        if key not in self._media_text:
            describe = {"image": self._image_text, "audio": self._audio_text, "video": self._video_text}[kind]
            self._media_text[key] = await describe(part)
            while len(self._media_text) > 256:
                self._media_text.popitem(last=False)
        self._media_text.move_to_end(key)
        return self._media_text[key].replace("{n}", str(counters[kind]))

    async def _image_text(self, image: ImageInput) -> str:
        from omnilive.backends.vision import describe_image

        loop = asyncio.get_running_loop()
        facts = await loop.run_in_executor(self._vision_pool, describe_image, image)
        return facts.as_context(label="Image {n}")

    async def _audio_text(self, audio: AudioInput) -> str:
        t = await self.transcribe(audio)
        if not t.text.strip():
            return f"[Audio {{n}}, {audio.duration_s:.1f} s: no speech recognised]"
        return f"[Audio {{n}}, {audio.duration_s:.1f} s, speech recognition ({t.language}): \"{t.text.strip()}\"]"

    async def _video_text(self, video: VideoInput) -> str:
        """One flat block: what OCR read across a few spread-out frames, plus the audio track."""
        from omnilive.backends.vision import describe_image

        loop = asyncio.get_running_loop()
        n = len(video.frames)
        wanted = min(n, FRAMES_DESCRIBED_PER_VIDEO)
        picks = sorted({round(i * (n - 1) / max(1, wanted - 1)) for i in range(wanted)})
        texts: list[str] = []  # OCR lines in order of first appearance
        colours = ""
        for i in picks:
            facts = await loop.run_in_executor(self._vision_pool, describe_image, ImageInput(video.frames[i]))
            colours = colours or facts.colour_phrase()
            texts += [line.text for line in facts.ocr_lines if line.text not in texts]
        parts = [f"{video.duration_s:.1f} s, {n} frames at {video.fps:g} fps, {colours}."]
        parts.append("Text found by OCR in its frames: " + " / ".join(f'"{t}"' for t in texts) + "." if texts else "OCR found no text in its frames.")
        if video.audio is None:
            parts.append("It has no audio track.")
        else:
            t = await self.transcribe(video.audio)
            said = t.text.strip()
            parts.append(f'Its audio track, by speech recognition: "{said}".' if said else "No speech recognised in its audio track.")
        return f"[Video {{n}}, machine-extracted description (the video itself was not seen): {' '.join(parts)}]"


def _text_runs_joined(items: list) -> list:
    """Adjacent TextDeltas as one (text and logprobs concatenated); everything else in order."""
    joined: list = []
    for item in items:
        if isinstance(item, TextDelta) and joined and isinstance(joined[-1], TextDelta):
            item = TextDelta(joined[-1].text + item.text, joined[-1].logprobs + item.logprobs)
            joined[-1] = item
        else:
            joined.append(item)
    return joined


def _digest(part) -> str:
    h = hashlib.blake2b(digest_size=16)
    if isinstance(part, ImageInput):
        h.update(part.image.tobytes())
        h.update(repr(part.image.size).encode())
    elif isinstance(part, AudioInput):
        h.update(np.ascontiguousarray(part.samples).tobytes())
    else:
        for frame in part.frames:
            h.update(frame.tobytes())
        if part.audio is not None:
            h.update(np.ascontiguousarray(part.audio.samples).tobytes())
    return h.hexdigest()
