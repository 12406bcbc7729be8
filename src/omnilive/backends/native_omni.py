"""NativeBackend: a Hugging Face Qwen2.5-Omni checkpoint behind the Backend interface.

    omnilive serve --model /models/Qwen2.5-Omni-7B      (or a hub id: Qwen/Qwen2.5-Omni-3B)

Every part runs on our own modules (omnilive.model): the thinker reads text, images, audio
and video; its talker and token2wav turn the reply into speech. Requests are batched
continuously by the one engine (engine.llm_engine.LLMEngine, up to settings.max_batch at
once, the rest wait, admission "reserve") behind its asyncio front (AsyncLLM), so torch never
runs on the event loop and closing the caller's iterator aborts the request within a step.
Text streams token by token; speech streams along with it (engine.speech_stage). What this
backend adds is the model family's part: loading, the prompt (processor), the media encoded
on the prompt worker before a request joins the engine (so the engine thread only runs its
prefill chunks), voices, and whole-utterance speech for /v1/audio/speech (native_speech).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import torch

from omnilive.backends.native_media_keys import MediaEncoderCache, prepare_prompt
from omnilive.backends.native_prompt import (
    SPEECH_SYSTEM_PROMPT,
    OmniProcessor,
    load_omni_tokenizer,
)
from omnilive.backends.native_qwen3_omni import Qwen3WholeSpeech, qwen3_speech_model
from omnilive.backends.native_speech import WholeSpeech
from omnilive.backends.speech_parts import load_speaking_parts, qwen2_5_omni_speaks
from omnilive.backends.staged_speech import spoken_elsewhere
from omnilive.backends.registry import OmniModel
from omnilive.engine.async_engine import AsyncLLM, engine_outputs
from omnilive.engine.llm_engine import LLMEngine, SpeechModel
from omnilive.engine.qwen3_speech import Qwen3SpeechModel
from omnilive.engine.request import PreparedPrompt
from omnilive.engine.speech import SpeechSettings
from omnilive.engine.speech_engine import AsyncSpeech, SpeechEngine
from omnilive.engine.speech_export import SpeechService
from omnilive.engine.speech_chunker import SpeechChunker
from omnilive.engine.tool_calls import output_format
from omnilive.engine.torch_threads import FreshThreadExecutor
from omnilive.model.omni_checkpoint import (
    load_thinker,
    read_config,
    resolve_checkpoint_dir,
)
from omnilive.model.qwen3_omni_code2wav import Qwen3OmniCode2Wav
from omnilive.model.qwen3_omni_talker import Qwen3OmniTalker
from omnilive.model.talker import Talker, load_talker
from omnilive.model.token2wav import Token2Wav, Voice, load_token2wav, pack_dit
from omnilive.model.weights import pick_compute_dtype, pick_dtype, resolve_dtype
from omnilive.types import (
    AudioInput,
    EngineError,
    EngineOutput,
    EngineRequest,
    Message,
    ModelCard,
    SamplingParams,
    TextDelta,
    Transcript,
)

log = logging.getLogger(__name__)

DEFAULT_VOICE = "Chelsie"
ASR_SYSTEM_PROMPT = "You are a speech recognition model."
TRANSCRIPT_MAX_TOKENS = 448


def load_omni(directory: str | Path, dtype: torch.dtype | str | None = None, device: str = "cpu",
              quantize: str = "none") -> OmniModel:
    """The checkpoint directory (or hub id) loaded by its family's loader (backends/registry.py).
    quantize "int8" (OMNILIVE_QUANTIZE): a MoE family's experts in int8 (INT8_EXPERT_FAMILIES);
    other families, and other values, load their weights as they are."""
    from omnilive.backends.registry import INT8_EXPERT_FAMILIES, loader_for

    directory = resolve_checkpoint_dir(directory)
    dtype = pick_dtype(device) if dtype in (None, "auto") else resolve_dtype(dtype)
    model_type = read_config(directory).get("model_type")
    loader = loader_for(model_type, directory)
    if quantize != "int8":
        return loader(directory, dtype, device)
    if model_type not in INT8_EXPERT_FAMILIES:
        log.warning("quantize=int8 holds the MoE experts of %s checkpoints in int8; this %s checkpoint loads "
                    "unquantised", ", ".join(sorted(INT8_EXPERT_FAMILIES)), model_type)
        return loader(directory, dtype, device)
    return loader(directory, dtype, device, int8_experts=True)


def load_qwen2_5_omni(directory: Path, dtype: torch.dtype, device: str) -> OmniModel:
    """Thinker, tokenizer and processor of a Qwen2.5-Omni checkpoint, plus its talker,
    token2wav and voices when it can speak (a talker config, audio output enabled and
    spk_dict.pt present)."""
    thinker = load_thinker(directory, dtype, device)
    tokenizer = load_omni_tokenizer(directory)
    model = OmniModel(thinker, tokenizer, OmniProcessor.from_checkpoint(directory, tokenizer, thinker.thinker_config))
    config = read_config(directory)
    if qwen2_5_omni_speaks(directory, config):
        model.talker = load_talker(directory, dtype, device)
        model.token2wav, model.voices = load_token2wav(directory, device)
    return model


def pick_voice(voices: dict[str, Voice], name: str | None) -> tuple[str, Voice]:
    """The voice `name` names, case-insensitively (None = Chelsie, else the first); EngineError if unknown."""
    if not voices:
        raise EngineError("this model cannot speak: its checkpoint has no talker", param="modalities")
    by_lower = {key.lower(): key for key in voices}
    if not name:
        key = DEFAULT_VOICE if DEFAULT_VOICE in voices else min(voices)
    elif name.lower() in by_lower:
        key = by_lower[name.lower()]
    else:
        raise EngineError(f"unknown voice {name!r}; available: {', '.join(sorted(voices))}", param="voice",
                          code="invalid_voice")
    return key, voices[key]


def answer_phrase(setting: str, detected: str | None) -> str | None:
    """OMNILIVE_REASONING_ANSWER_PHRASE: "auto" = what the checkpoint's loader found (QVQ's
    phrase, else none), "none" (or empty) = off, any other text = that phrase."""
    if setting == "auto":
        return detected
    return None if setting.strip().lower() in ("", "none") else setting


def speech_model(talker: Talker | Qwen3OmniTalker | None, vocoder: Token2Wav | Qwen3OmniCode2Wav | None,
                 thinker_dtype: torch.dtype, s, token2wav_steps: int, device: str) -> SpeechModel | Qwen3SpeechModel | None:
    """Talker, vocoder and how they stream, for a checkpoint that speaks (None: it does not)."""
    if talker is None or vocoder is None:
        return None
    if isinstance(talker, Qwen3OmniTalker):
        return qwen3_speech_model(talker, vocoder, s)
    speech_dtype = s.speech_dtype
    if speech_dtype == "auto":  # bfloat16 with a bfloat16 model where bf16 matmuls are fast
        fast = pick_compute_dtype(device) == torch.bfloat16  # (never float16: the DiT overflows it)
        speech_dtype = torch.bfloat16 if fast and thinker_dtype == torch.bfloat16 else torch.float32
    speech_dtype = resolve_dtype(speech_dtype)
    pack_dit(vocoder, speech_dtype)
    settings = SpeechSettings.for_model(vocoder, token2wav_steps,
                                        first_chunk_steps=s.token2wav_first_chunk_steps, dit_dtype=speech_dtype)
    return SpeechModel(talker, vocoder, settings, speech_lead_s=s.speech_lead_seconds)


def load_speech_engine(s, token2wav_steps: int | None = None) -> AsyncSpeech:
    """The speech stage alone (`--stages`): talker and vocoder (Qwen2.5-Omni's token2wav, Qwen3-Omni's
    code predictor and Code2Wav), with the thinker's token embeddings they read; the rest of the
    thinker is never loaded (backends/speech_parts.py)."""
    torch.set_num_threads(s.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = pick_dtype(device) if s.dtype in (None, "auto") else resolve_dtype(s.dtype)
    parts = load_speaking_parts(resolve_checkpoint_dir(s.model), dtype, device)
    speech = speech_model(parts.talker, parts.vocoder, parts.thinker_dtype, s, token2wav_steps or s.token2wav_steps,
                          device)
    engine = SpeechEngine(speech, parts.thinker_embed, max_streams=s.max_batch,
                          context_length=min(s.max_context_tokens, parts.context_length))
    return AsyncSpeech(engine, threads=s.threads)


class NativeBackend:
    """Backend over a Qwen2.5-Omni or Qwen2.5-VL checkpoint; loads in `start()`."""

    def __init__(self, settings, token2wav_steps: int | None = None, speech_service: SpeechService | None = None):
        """token2wav_steps: overrides settings.token2wav_steps (tests use few). speech_service: a
        speech stage elsewhere that speaks this backend's replies (`--stages`); None: here."""
        self.settings = settings
        self.speech_service = speech_service
        self.speaks_elsewhere = False  # set by loading: the checkpoint speaks and speech_service is given
        self.token2wav_steps = token2wav_steps or settings.token2wav_steps
        self.model: OmniModel | None = None
        self.engine: LLMEngine | None = None
        self.whole_speech: WholeSpeech | Qwen3WholeSpeech | None = None
        self.media_cache = MediaEncoderCache(settings.media_cache_mb << 20)
        self._llm: AsyncLLM | None = None
        self._card: ModelCard | None = None
        # loading, prompt building, media encoding and /v1/audio/speech, one call at a time;
        # requests run on the engine thread. Fresh threads: no second OpenMP pool outlives a call
        self._worker = FreshThreadExecutor(thread_name_prefix="omni")

    @property
    def card(self) -> ModelCard:
        if self._card is None:
            raise RuntimeError("engine not started")
        return self._card

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    def _load(self) -> None:
        s = self.settings
        t0 = time.perf_counter()
        torch.set_num_threads(s.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        directory = resolve_checkpoint_dir(s.model)
        self.model = load_omni(directory, s.dtype, device, s.quantize)
        speech = speech_model(self.model.talker, self.model.token2wav, self.model.thinker.dtype, s,
                              self.token2wav_steps, device)
        self.speaks_elsewhere = speech is not None and self.speech_service is not None
        self.engine = LLMEngine(self.model.thinker, self.model.tokenizer, max_slots=s.max_batch,
                                context_length=s.max_context_tokens, prefill_chunk_tokens=s.prefill_chunk_tokens,
                                speech=speech, admission="reserve",
                                export_speech=self.speaks_elsewhere,
                                answer_phrase=answer_phrase(s.reasoning_answer_phrase, self.model.answer_phrase))
        if isinstance(speech, SpeechModel):
            self.whole_speech = WholeSpeech(self.model, speech.settings, s.max_context_tokens, s.prefill_chunk_tokens)
        elif isinstance(speech, Qwen3SpeechModel):
            self.whole_speech = Qwen3WholeSpeech(self.model, speech.settings, s.max_context_tokens)
        self._llm = AsyncLLM(self.engine, threads=s.threads)
        self._card = self._model_card(directory)
        log.info("%s loaded from %s in %.1f s (%s, %s)", self.model.family, directory, time.perf_counter() - t0,
                 self.model.thinker.dtype, device)

    def _model_card(self, directory: Path) -> ModelCard:
        s, family = self.settings, self.model.family
        role = "thinker" if hasattr(self.model.thinker, "encode_media") else "llm"  # a text-only model: "llm"
        parts = [{"role": role, "name": f"{family} {role}", "source": str(directory)}]
        if self.model.talker is not None:
            vocoder = "code2wav" if isinstance(self.model.talker, Qwen3OmniTalker) else "token2wav"
            parts += [{"role": "talker", "name": f"{family} talker", "source": str(directory)},
                      {"role": vocoder, "name": f"{family} {vocoder}", "source": str(directory)}]
        voices = tuple(sorted(self.model.voices))
        return ModelCard(
            id=directory.name if Path(s.model).expanduser().is_dir() else s.model,
            owned_by="omnilive",
            parts=tuple(parts),
            context_length=self.engine.max_request_tokens,
            voices=voices,
            default_voice=pick_voice(self.model.voices, None)[0] if voices else "",
            output_modalities=("text", "audio") if voices else ("text",),
            input_modalities=self.model.processor.input_modalities,
        )

    async def stop(self) -> None:
        if self._llm is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._llm.shutdown, 10.0)
        self._worker.shutdown(wait=False, cancel_futures=True)

    # requests

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        speak = "audio" in request.modalities
        voice = pick_voice(self.model.voices, request.voice)[1] if speak else None
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(self._worker, self.model.processor.build, request.messages, speak,
                                            dict(request.chat_template_kwargs), request.offered_tools)
        prepared: PreparedPrompt | list[int] = prompt.input_ids  # a text-only model takes token ids
        if hasattr(self.model.thinker, "encode_media"):
            # the vision and audio towers run here, on the prompt worker: on the engine thread
            # they would stall every running stream for as long as they take
            prepared = await loop.run_in_executor(self._worker, self.prepare, prompt)
        stream = self._llm.generate(request.request_id, prepared, request.sampling, request.max_thinking_tokens,
                                    voice=voice, min_thinking_tokens=request.min_thinking_tokens,
                                    output=output_format(request.tools, request.tool_choice, request.response_format))
        outputs = spoken_elsewhere(request.request_id, stream, self.speech_service) \
            if voice is not None and self.speaks_elsewhere else engine_outputs(stream)
        async for output in outputs:
            yield output

    def prepare(self, prompt) -> PreparedPrompt:
        """The prompt's media encoded and merged (media cache first); EngineError when they cannot be."""
        try:
            return prepare_prompt(self.model.thinker, prompt, self.media_cache)
        except EngineError:
            raise
        except Exception as error:  # a media item the towers cannot take: this request fails alone
            log.exception("media encoding failed")
            raise EngineError(f"the engine failed: {error}") from error

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.model.processor.build(messages))

    async def transcribe(self, audio: AudioInput, language: str | None = None, prompt: str | None = None) -> Transcript:
        """Speech recognition by the thinker itself, greedy, as Qwen2.5-Omni's cookbook asks for it."""
        what = f"the {language} audio" if language else "the audio"
        instruction = f"Transcribe {what} into text." + (f" Context: {prompt}" if prompt else "")
        request = EngineRequest(
            request_id=f"transcribe-{uuid.uuid4().hex}",
            messages=(Message("system", (ASR_SYSTEM_PROMPT,)), Message("user", (audio, instruction))),
            sampling=SamplingParams(temperature=0.0, max_tokens=TRANSCRIPT_MAX_TOKENS),
        )
        text = "".join([out.text async for out in self.generate(request) if isinstance(out, TextDelta)])
        return Transcript(text=text.strip(), language=language or "unknown", duration_s=audio.duration_s)

    async def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> AsyncIterator[np.ndarray]:
        """Speech of `text` in one of the model's voices, sentence by sentence: each sentence is
        the reply to "say this", spoken by the talker (Qwen2.5-Omni: after a thinker prefill
        that gives the talker the reply's hidden states; Qwen3-Omni: from its embeddings)."""
        _, chosen = pick_voice(self.model.voices, voice)
        if speed != 1.0:
            raise EngineError("this model speaks at speed 1.0 only", param="speed")
        loop = asyncio.get_running_loop()
        chunker = SpeechChunker()
        for sentence in chunker.feed(text) + chunker.flush():
            messages = (Message("system", (SPEECH_SYSTEM_PROMPT,)), Message("user", (f"Say: {sentence}",)))
            prompt = await loop.run_in_executor(self._worker, self.model.processor.build, messages, True)
            samples = await loop.run_in_executor(self._worker, self.whole_speech.speak_text, prompt, sentence, chosen)
            if samples is not None:
                yield samples
