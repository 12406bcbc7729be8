"""A speech stage on its own: the talker and vocoder of replies a thinker writes elsewhere.

    SpeechFeed (speech_export.py) ──AsyncSpeech.speak──▶ engine thread: SpeechEngine.feed
        ──▶ the request's stream (start, reply tokens, text, end)
    SpeechEngine.step = the stage's step: ONE talker step for every ready stream, then the
        vocoder (token2wav windows; Qwen3-Omni: Code2Wav chunks) ──▶ AudioChunks back to each
        request's `speak` iterator, then its end

The stage is the model's own (`make_stage` of SpeechModel or Qwen3SpeechModel, as the
in-process engine builds it) with the same streams and settings, so a request fed the same
feeds speaks the same codes and audio. Talker rows are the stage's cache rows: a request
takes one with its start and waits (its feeds kept, in order) while none is free.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from omnilive.engine.llm_engine import SpeechModel
from omnilive.engine.qwen3_speech import Qwen3SpeechModel, Qwen3SpeechStream
from omnilive.engine.speech import SpeechStream
from omnilive.engine.speech_export import SpeechFeed
from omnilive.engine.step_thread import StepThread
from omnilive.engine.torch_threads import set_torch_threads
from omnilive.types import AudioChunk, EngineError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SpeechJob:
    """One request's speech: what SpeechStage.step reads and writes of an engine Request."""

    request_id: str
    pending: list[SpeechFeed] = field(default_factory=list)  # until it has a talker row
    talker_slot: int | None = None
    speech: SpeechStream | Qwen3SpeechStream | None = None
    ended: bool = False  # the reply's text has ended (speech may go on)
    speech_done: bool = False
    error: EngineError | None = None
    audio: list[AudioChunk] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.ended

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def done(self) -> bool:
        return self.speech_done or self.failed


@dataclass(frozen=True)
class SpeechOutput:
    request_id: str
    audio: tuple[AudioChunk, ...] = ()
    done: bool = False
    error: EngineError | None = None


class SpeechEngine:
    """Not thread-safe: AsyncSpeech calls it from its engine thread only."""

    def __init__(self, speech: SpeechModel | Qwen3SpeechModel, thinker_embed: torch.nn.Embedding, *,
                 max_streams: int, context_length: int):
        self.stage = speech.make_stage(thinker_embed, max_streams=max_streams, context_length=context_length)
        self.jobs: dict[str, SpeechJob] = {}

    def feed(self, request_id: str, feed: SpeechFeed) -> None:
        job = self.jobs.setdefault(request_id, SpeechJob(request_id))
        job.pending.append(feed)
        self._admit()

    def abort(self, request_id: str) -> None:
        job = self.jobs.pop(request_id, None)
        if job is not None and job.talker_slot is not None:
            self.stage.talker_cache.free(job.talker_slot)

    def has_work(self) -> bool:
        return bool(self.jobs)

    def step(self) -> list[SpeechOutput]:
        self._admit()
        streaming = [job for job in self.jobs.values() if job.speech is not None and not job.done]
        self.stage.step(streaming, self._fail)
        outputs = []
        for job in list(self.jobs.values()):
            if job.audio or job.done:
                outputs.append(SpeechOutput(job.request_id, tuple(job.audio), job.done, job.error))
                job.audio = []
            if job.done:
                self.abort(job.request_id)
        return outputs

    def _admit(self) -> None:
        """Jobs with a start get a talker row, oldest first; each applies its pending feeds."""
        cache = self.stage.talker_cache
        for job in self.jobs.values():
            if job.speech is None and job.pending and job.pending[0].start is not None:
                if not cache.num_free:
                    continue
                job.talker_slot = cache.allocate()
                start = job.pending[0].start
                job.speech = self.stage.new_stream(start.voice, start.seed, job.talker_slot)
            elif job.speech is None and job.pending and job.pending[-1].ended:
                job.ended = job.speech_done = True  # the reply ended before its prompt was in: nothing to say
                continue
            if job.speech is not None:
                while job.pending and not job.failed:
                    self._apply(job, job.pending.pop(0))

    def _apply(self, job: SpeechJob, feed: SpeechFeed) -> None:
        try:
            with torch.inference_mode():
                speech = job.speech
                if feed.start is not None:
                    speech.start(feed.start.prompt, feed.start.prompt_hidden)
                for i in range(feed.reply_tokens):
                    speech.add_reply_token(*feed.reply_token(i))
                if feed.text:
                    speech.tell(feed.text)
                if feed.ended:
                    speech.finish_text()
                    job.ended = True
        except Exception as error:  # noqa: BLE001 - this request's speech alone fails
            self._fail(job, error)

    def _fail(self, job: SpeechJob, error: BaseException) -> None:
        log.error("speech of %s failed: %s", job.request_id, error)
        job.error = error if isinstance(error, EngineError) else EngineError(f"the speech stage failed: {error}")


class AsyncSpeech:
    """The asyncio front of a SpeechEngine, as AsyncLLM is of LLMEngine: one thread steps it."""

    def __init__(self, engine: SpeechEngine, threads: int | None = None):
        self.engine = engine
        self._lock = threading.Lock()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}  # guarded by _lock
        self._thread = StepThread("omnilive-speech-engine", engine.has_work, self._step, self._fail_all,
                                  self._end_all, on_start=lambda: set_torch_threads(threads))

    async def speak(self, request_id: str, feeds: AsyncIterator[SpeechFeed]) -> AsyncIterator[AudioChunk]:
        """The request's audio while its feeds come in; ends when its speech has; EngineError
        when it fails. Closing it early aborts the request's speech."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if request_id in self._queues:
                raise EngineError(f"speech of {request_id!r} is already running")
            self._queues[request_id] = (asyncio.get_running_loop(), queue)

        async def pump() -> None:
            async for feed in feeds:
                self._thread.submit(lambda feed=feed: self.engine.feed(request_id, feed))

        pumping = asyncio.create_task(pump())
        getting: asyncio.Future | None = None
        done = False
        try:
            while True:
                getting = getting or asyncio.ensure_future(queue.get())
                await asyncio.wait([getting] if pumping.done() else [getting, pumping],
                                   return_when=asyncio.FIRST_COMPLETED)
                if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
                    raise pumping.exception()  # the feeds broke off (the thinker failed or went away)
                if not getting.done():
                    continue
                output: SpeechOutput = getting.result()
                getting = None
                for chunk in output.audio:
                    yield chunk
                if output.error is not None:
                    done = True
                    raise output.error
                if output.done:
                    done = True
                    return
        finally:
            pumping.cancel()
            if getting is not None:
                getting.cancel()
            with self._lock:
                self._queues.pop(request_id, None)
            if not done:
                self._thread.submit(lambda: self.engine.abort(request_id))

    def shutdown(self, timeout: float | None = 10.0) -> None:
        self._thread.stop(timeout)

    def _step(self) -> None:
        for output in self.engine.step():
            self._put(output.request_id, output)

    def _put(self, request_id: str, output: SpeechOutput) -> None:
        with self._lock:
            target = self._queues.get(request_id)
        if target is not None:
            try:
                target[0].call_soon_threadsafe(target[1].put_nowait, output)
            except RuntimeError:  # its loop is closed: nobody listens
                pass

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self.engine.jobs):
            self.engine.abort(request_id)
            self._put(request_id, SpeechOutput(request_id, done=True,
                                               error=EngineError(f"the speech stage failed: {error}")))

    def _end_all(self) -> None:
        for request_id in list(self.engine.jobs):
            self.engine.abort(request_id)
            self._put(request_id, SpeechOutput(request_id, done=True, error=EngineError("the speech stage stopped")))
