"""The native-engine tests' handles on the real engine, and their references.

`Runner` bundles a test's settings (context, chunk size, speech settings) and the reference
paths the engine is compared with: `think`, one request alone through its own single-slot
cache, token by token (the plain decode loop a reader can check by eye), and the
whole-utterance speech of src (WholeSpeech). `Batch` drives the one engine
(engine.llm_engine.LLMEngine) with a model that speaks, as NativeBackend does minus the
asyncio front: each `Job`'s outputs arrive as the server's typed messages.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from functools import cached_property

import torch

from omnilive.backends.native_media_keys import MediaEncoderCache, prepare_prompt
from omnilive.backends.native_prompt import OmniPrompt
from omnilive.backends.native_speech import ThinkerReply, WholeSpeech
from omnilive.backends.registry import OmniModel
from omnilive.engine.async_engine import as_engine_outputs
from omnilive.engine.detokenizer import Detokenizer
from omnilive.engine.llm_engine import LLMEngine, SpeechModel
from omnilive.engine.request import Request
from omnilive.engine.sampling import SamplingRow, TokenSample, make_generator, sample
from omnilive.engine.speech import SPEECH_SCHEDULE, SpeechSettings
from omnilive.engine.talker_generate import TALKER_MAX_NEW_TOKENS, TALKER_SAMPLING
from omnilive.model.kv_cache import KVCache
from omnilive.model.token2wav import Voice
from omnilive.types import EngineError, SamplingParams, TextDelta, TokenLogprob

_ids = itertools.count()


class Runner:
    def __init__(self, model: OmniModel, context_length: int = 512, prefill_chunk_tokens: int = 64,
                 token2wav_steps: int = 3, talker_sampling: SamplingParams = TALKER_SAMPLING,
                 speech_schedule=SPEECH_SCHEDULE, talker_max_new_tokens: int = TALKER_MAX_NEW_TOKENS,
                 first_chunk_steps: int | None = None, speech_dtype: torch.dtype = torch.float32):
        self.model, self.context_length, self.prefill_chunk_tokens = model, context_length, prefill_chunk_tokens
        self.speech_settings = None
        if model.token2wav is not None:
            self.speech_settings = SpeechSettings.for_model(model.token2wav, token2wav_steps, talker_sampling,
                                                            speech_schedule, talker_max_new_tokens,
                                                            first_chunk_steps, speech_dtype)
            self.whole = WholeSpeech(model, self.speech_settings, context_length, prefill_chunk_tokens)

    @property
    def speech_vocab_size(self) -> int:
        return self.speech_settings.speech_vocab_size

    def codec_tokens(self, reply: ThinkerReply, voice: Voice, seed: int | None = None) -> list[int]:
        return self.whole.codec_tokens(reply, voice, seed)

    def speech_codes(self, codes: list[int]) -> list[int]:
        return self.whole.speech_codes(codes)

    def waveform(self, codes: list[int], voice: Voice, seed: int | None = None):
        return self.whole.waveform(codes, voice, seed)

    @cached_property
    def cache(self) -> KVCache:
        return self.model.thinker.make_cache(1, self.context_length)

    @torch.inference_mode()
    def think(self, prompt: OmniPrompt, sampling: SamplingParams, emit: Callable = lambda out: None,
              cancelled: Callable[[], bool] = lambda: False, keep_hidden: bool = False) -> ThinkerReply:
        """The reference: one request alone, its prompt in chunks, then one token at a time."""
        thinker, tokenizer, slot = self.model.thinker, self.model.tokenizer, torch.tensor([0])
        prepared = thinker.prepare_prompt(prompt.input_ids, prompt.media)
        max_new = min(sampling.max_tokens or self.context_length, self.context_length - len(prepared))
        size = self.prefill_chunk_tokens
        chunks = [thinker(cache=self.cache, slots=slot, **prepared.prefill_inputs(start, min(start + size, len(prepared))))[0]
                  for start in range(0, len(prepared), size)]
        hidden = torch.cat(chunks)
        reply = ThinkerReply([], "", "length", prepared, hidden if keep_hidden else None, [], [])
        logits = thinker.compute_logits(hidden[None, -1])
        row = SamplingRow(sampling, make_generator(sampling.seed), list(prompt.input_ids))
        detokenizer = Detokenizer(self._text_bytes, sampling.stop)
        while True:
            choice = sample(logits, [row])[0]
            token = choice.token_id
            reply.token_ids.append(token)
            row.seen_token_ids.append(token)
            if token in tokenizer.stop_token_ids:
                reply.finish_reason = "stop"
                break
            text = detokenizer.add_token(token, reasoning=False).content
            logprobs = (self._logprob(token, choice),) if choice.logprob is not None else ()
            if text or logprobs:
                reply.text += text
                emit(TextDelta(text, logprobs))
            if detokenizer.stopped or len(reply.token_ids) >= max_new or cancelled():
                reply.finish_reason = "abort" if cancelled() else "stop" if detokenizer.stopped else "length"
                break
            position = torch.tensor([[len(prepared) + len(reply.token_ids) - 1]])
            last = thinker(torch.tensor([[token]]), position, self.cache, slot,
                           rope_positions=position + prepared.rope_delta)[0, -1]
            if keep_hidden:
                reply.reply_hidden.append(last)
                reply.reply_embeds.append(thinker.model.embed_tokens(torch.tensor(token)))
            logits = thinker.compute_logits(last[None])
        if reply.finish_reason != "abort" and (tail := detokenizer.finish().content):
            reply.text += tail
            emit(TextDelta(tail))
        return reply

    def _text_bytes(self, token_id: int) -> bytes:
        tokenizer = self.model.tokenizer
        return b"" if tokenizer.is_special(token_id) else tokenizer.token_bytes(token_id)

    def _logprob(self, token_id: int, choice: TokenSample) -> TokenLogprob:
        def text_and_bytes(t: int) -> tuple[str, bytes]:
            data = self.model.tokenizer.token_bytes(t)
            return data.decode("utf-8", errors="replace"), data

        text, data = text_and_bytes(token_id)
        top = tuple((alt_text, lp, tuple(alt_data)) for t, lp in choice.top for alt_text, alt_data in [text_and_bytes(t)])
        return TokenLogprob(token=text, logprob=float(choice.logprob), bytes=tuple(data), top=top)


class Job:
    """One request for `Batch`: what was asked, and its outputs as they arrive."""

    def __init__(self, prompt: OmniPrompt, sampling: SamplingParams, voice: Voice | None, emit: Callable):
        self.prompt, self.sampling, self.voice, self.emit = prompt, sampling, voice, emit
        self.request_id = f"job-{next(_ids)}"
        self.request: Request | None = None
        self.refused = False  # its media failed before it reached the engine

    @property
    def token_ids(self) -> list[int]:
        return self.request.token_ids[len(self.prompt):] if self.request else []

    @property
    def cached(self) -> int:
        return self.request.num_cached or 0

    @property
    def speech(self):
        return self.request.speech if self.request else None

    @property
    def slot(self) -> int | None:
        return self.request.row if self.request else None

    @property
    def talker_slot(self) -> int | None:
        return self.request.talker_slot if self.request else None

    @property
    def blocks(self):
        return self.request.blocks

    @property
    def done(self) -> bool:
        return self.refused or (self.request is not None and self.request.done)

    @property
    def finish_reason(self):
        return self.request.finish_reason


class Batch:
    def __init__(self, runner: Runner, max_batch: int = 4, block_size: int = 16, num_blocks: int | None = None,
                 speech_lead_s: float = 1.5, clock: Callable[[], float] = time.monotonic,
                 windows_per_step: int | None | str = "auto", media_cache_bytes: int = 256 << 20):
        model = runner.model
        speech = None
        if runner.speech_settings is not None and model.talker is not None:
            speech = SpeechModel(model.talker, model.token2wav, runner.speech_settings, speech_lead_s,
                                 windows_per_step, clock)
        self.model, self.runner = model, runner
        self.engine = LLMEngine(model.thinker, model.tokenizer, max_slots=max_batch,
                                context_length=runner.context_length, prefill_chunk_tokens=runner.prefill_chunk_tokens,
                                kv_block_size=block_size, num_kv_blocks=num_blocks, speech=speech, admission="reserve")
        self.media_cache = MediaEncoderCache(media_cache_bytes)
        self.jobs: dict[str, Job] = {}

    def add(self, job: Job) -> None:
        """As NativeBackend.generate: media prepared (a bad item fails that job alone), then the engine."""
        try:
            prepared = prepare_prompt(self.model.thinker, job.prompt, self.media_cache)
        except Exception as error:  # noqa: BLE001
            job.refused = True
            job.emit(error if isinstance(error, EngineError) else EngineError(f"the engine failed: {error}"))
            return
        self.engine.add_request(job.request_id, prepared, job.sampling, voice=job.voice)
        job.request = self.engine.find(job.request_id)
        self.jobs[job.request_id] = job

    def step(self) -> None:
        for out in self.engine.step():
            job = self.jobs[out.request_id]
            if out.error is not None:  # it failed alone: the caller gets the error
                job.emit(out.error)
                continue
            for message in as_engine_outputs(out):
                job.emit(message)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def run_until_idle(self) -> None:
        while self.has_work():
            self.step()

    def abort(self, job: Job) -> None:
        self.engine.abort(job.request_id)

    @property
    def running(self) -> list[Job]:
        requests = [*self.engine.scheduler.running, *self.engine.speaking]
        return [self.jobs[r.request_id] for r in requests]

    @property
    def waiting(self) -> list[Job]:
        return [self.jobs[r.request_id] for r in self.engine.scheduler.waiting]

    @property
    def cache(self):
        return self.engine.cache

    @property
    def talker_cache(self) -> KVCache:
        return self.engine.speech.talker_cache

    @property
    def blocks(self):
        return self.engine.scheduler.blocks

    @property
    def windows_per_step(self):
        return self.engine.speech.windows_per_step

    @property
    def computed_prompt_tokens(self) -> int:
        return self.engine.num_computed_prompt_tokens
