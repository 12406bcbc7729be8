"""The asyncio front of the engine (`LLMEngine`): one background thread steps the engine, coroutines stream.

All torch work runs on the engine thread (StepThread), never on the event loop. Coroutines
hand the thread commands (add, abort), which it runs between steps. Each step's outputs go to per-request `asyncio.Queue`s through
`loop.call_soon_threadsafe`. A consumer that stops iterating (aclose, task cancelled,
client gone) aborts its request, which the thread carries out before its next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from omnilive.engine.llm_engine import LLMEngine
from omnilive.engine.request import PreparedPrompt, RequestOutput
from omnilive.engine.speech_export import joined_feeds
from omnilive.engine.step_thread import StepThread
from omnilive.engine.tool_calls import OutputFormat
from omnilive.engine.torch_threads import set_torch_threads
from omnilive.model.token2wav import Voice
from omnilive.types import (
    EngineError,
    EngineOutput,
    Finished,
    ReasoningDelta,
    SamplingParams,
    TextDelta,
    Usage,
)

log = logging.getLogger(__name__)

__all__ = ["AsyncLLM", "RequestOutput", "as_engine_outputs", "engine_outputs"]


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # of RequestOutput | BaseException

    def put(self, item: RequestOutput | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening
            pass


class AsyncLLM:
    def __init__(self, engine: LLMEngine, threads: int | None = None):
        """threads: torch's CPU threads on the engine thread (None: torch's default)."""
        self.engine = engine
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}  # guarded by _lock
        self._thread = StepThread("omnilive-llm-engine", engine.has_work, self._step, self._fail_all,
                                  self._end_all_streams, on_start=lambda: set_torch_threads(threads))
        # the grammar vocabulary takes about a second to build: not on the first tool request
        threading.Thread(target=lambda: engine.grammars.tokenizer, name="omnilive-grammar-vocabulary",
                         daemon=True).start()

    async def generate(
        self,
        request_id: str,
        prompt: Sequence[int] | PreparedPrompt,
        sampling: SamplingParams,
        thinking_budget: int | None = None,
        stop_token_ids: Sequence[int] = (),
        voice: Voice | None = None,
        min_thinking_tokens: int = 0,
        output: OutputFormat | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs (LLMEngine.add_request's arguments); the last one has
        a finish_reason.

        Raises EngineError when the engine refuses the request (on the first iteration) or
        the request fails alone (a bad media item, a bug in its speech).
        """
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        prompt = prompt if isinstance(prompt, PreparedPrompt) else list(prompt)
        # compiling a grammar (and, the first time, the vocabulary) is not the step thread's work
        grammar = await asyncio.to_thread(self.engine.grammars.compile, output.grammar, output.param) \
            if output is not None and output.grammar else None
        with self._lock:
            if self._thread.stopping:
                raise EngineError("the engine is shut down")
            if request_id in self._streams:
                raise EngineError(f"request id {request_id!r} is already running", param="request_id")
            self._streams[request_id] = stream

        def add() -> None:
            try:
                self.engine.add_request(request_id, prompt, sampling, thinking_budget, stop_token_ids, voice,
                                        min_thinking_tokens, output, grammar)
            except Exception as error:  # EngineError (bad request) or a bug: the caller gets it
                stream.put(error)

        if not self._thread.submit(add):
            stream.put(EngineError("the engine is shut down"))
        finished = False
        try:
            while True:
                ready = [await stream.queue.get()]
                # A consumer that fell behind (many streams on one busy event loop) takes every
                # output already queued as one: one event per catch-up, not one per token.
                while isinstance(ready[-1], RequestOutput) and not ready[-1].finished and not stream.queue.empty():
                    ready.append(stream.queue.get_nowait())
                error = ready.pop() if isinstance(ready[-1], BaseException) else None
                if ready:
                    output = _joined(ready)
                    finished = output.finished
                    if output.error is not None:
                        raise output.error
                    yield output
                    if finished:
                        return
                if error is not None:
                    finished = True  # the engine never took it, or dropped it
                    raise error
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._thread.submit(lambda: self.engine.abort(request_id))

    def abort(self, request_id: str) -> None:
        """Abort from outside the stream; its consumer receives a final output with finish "abort"."""
        self._thread.submit(lambda: self.engine.abort(request_id))

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the thread; open streams end with finish "abort"."""
        self._thread.stop(timeout)

    @property
    def running(self) -> bool:
        return self._thread.running

    def _step(self) -> None:
        outputs = self.engine.step()
        with self._lock:
            streams = [(self._streams.get(o.request_id), o) for o in outputs]
        for stream, output in streams:
            if stream is not None:
                stream.put(output)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            streams = dict(self._streams)
        for request_id, stream in streams.items():
            self.engine.abort(request_id)
            stream.put(EngineError(f"the engine failed: {error}"))

    def _end_all_streams(self) -> None:
        with self._lock:
            streams = dict(self._streams)
        for request_id, stream in streams.items():
            self.engine.abort(request_id)
            stream.put(RequestOutput(request_id=request_id, finish_reason="abort"))


def _joined(outputs: list[RequestOutput]) -> RequestOutput:
    """Consecutive outputs of one request as one: deltas concatenated, running totals the latest."""
    if len(outputs) == 1:
        return outputs[0]
    return replace(
        outputs[-1],
        text="".join(o.text for o in outputs),
        reasoning="".join(o.reasoning for o in outputs),
        logprobs=tuple(lp for o in outputs for lp in o.logprobs),
        tool_calls=tuple(call for o in outputs for call in o.tool_calls),
        token_ids=tuple(t for o in outputs for t in o.token_ids),
        audio=tuple(chunk for o in outputs for chunk in o.audio),
        speech_feed=joined_feeds([o.speech_feed for o in outputs]),
    )


def as_engine_outputs(out: RequestOutput) -> list[EngineOutput]:
    """One engine output as the server's typed messages: reasoning and text deltas, audio
    chunks, then Finished with the usage once the request is over."""
    messages: list[EngineOutput] = []
    if out.reasoning:
        messages.append(ReasoningDelta(out.reasoning))
    if out.text or out.logprobs:
        messages.append(TextDelta(out.text, tuple(out.logprobs)))
    messages.extend(out.tool_calls)
    messages.extend(out.audio)
    if out.finish_reason is not None:
        messages.append(Finished(out.finish_reason, Usage(
            prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
            reasoning_tokens=out.reasoning_tokens, audio_prompt_tokens=out.audio_prompt_tokens,
            image_prompt_tokens=out.image_prompt_tokens, cached_prompt_tokens=out.cached_prompt_tokens)))
    return messages


async def engine_outputs(stream: AsyncIterator[RequestOutput]) -> AsyncIterator[EngineOutput]:
    """A request's stream of engine outputs as the server's typed messages (as_engine_outputs).
    Closing it closes (aborts) the stream."""
    try:
        async for out in stream:
            for message in as_engine_outputs(out):
                yield message
    finally:
        await stream.aclose()
