"""The asyncio front of `LLMEngine`: one background thread steps the engine, coroutines stream.

All torch work runs on the engine thread, never on the event loop. Coroutines hand the
thread commands (add, abort) through a condition variable; the thread sleeps on it when
there is no work. Each step's outputs go to per-request `asyncio.Queue`s through
`loop.call_soon_threadsafe`. A consumer that stops iterating (aclose, task cancelled,
client gone) aborts its request, which the thread carries out before its next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from omnilive.engine.llm_engine import LLMEngine
from omnilive.engine.request import LLMOutput
from omnilive.engine.types import EngineError, SamplingParams

log = logging.getLogger(__name__)

__all__ = ["AsyncLLM", "LLMOutput"]


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # of LLMOutput | BaseException

    def put(self, item: LLMOutput | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening
            pass


class AsyncLLM:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._wake = threading.Condition()
        self._commands: list[Callable[[], None]] = []  # guarded by _wake
        self._streams: dict[str, _Stream] = {}  # guarded by _wake
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="omnilive-llm-engine", daemon=True)
        self._thread.start()

    async def generate(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        thinking_budget: int | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> AsyncIterator[LLMOutput]:
        """Stream the request's outputs; the last one has a finish_reason.

        Raises EngineError (on the first iteration) when the engine refuses the request.
        """
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        prompt = list(prompt_ids)
        with self._wake:
            if self._stopping:
                raise EngineError("the engine is shut down")
            if request_id in self._streams:
                raise EngineError(f"request id {request_id!r} is already running", param="request_id")
            self._streams[request_id] = stream

        def add() -> None:
            try:
                self.engine.add_request(request_id, prompt, sampling, thinking_budget, stop_token_ids)
            except Exception as error:  # EngineError (bad request) or a bug: the caller gets it
                stream.put(error)

        self._submit(add)
        finished = False
        try:
            while True:
                ready = [await stream.queue.get()]
                # A consumer that fell behind (many streams on one busy event loop) takes every
                # output already queued as one: one event per catch-up, not one per token.
                while isinstance(ready[-1], LLMOutput) and not ready[-1].finished and not stream.queue.empty():
                    ready.append(stream.queue.get_nowait())
                error = ready.pop() if isinstance(ready[-1], BaseException) else None
                if ready:
                    output = _joined(ready)
                    finished = output.finished
                    yield output
                    if finished:
                        return
                if error is not None:
                    finished = True  # the engine never took it, or dropped it
                    raise error
        finally:
            with self._wake:
                self._streams.pop(request_id, None)
            if not finished:
                self._submit(lambda: self.engine.abort(request_id))

    def abort(self, request_id: str) -> None:
        """Abort from outside the stream; its consumer receives a final output with finish "abort"."""
        self._submit(lambda: self.engine.abort(request_id))

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the thread; open streams end with finish "abort"."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _submit(self, command: Callable[[], None]) -> None:
        with self._wake:
            self._commands.append(command)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._commands or self._stopping or self.engine.has_work()):
                    self._wake.wait()
                if self._stopping:
                    break
                commands, self._commands = self._commands, []
            for command in commands:
                command()
            if not self.engine.has_work():
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # a bug: fail every request rather than hang them
                log.exception("engine step failed")
                self._fail_all(error)
                continue
            with self._wake:
                streams = [(self._streams.get(o.request_id), o) for o in outputs]
            for stream, output in streams:
                if stream is not None:
                    stream.put(output)
        self._end_all_streams()

    def _fail_all(self, error: Exception) -> None:
        with self._wake:
            streams = dict(self._streams)
        for request_id, stream in streams.items():
            self.engine.abort(request_id)
            stream.put(EngineError(f"the engine failed: {error}"))

    def _end_all_streams(self) -> None:
        with self._wake:
            streams = dict(self._streams)
        for request_id, stream in streams.items():
            self.engine.abort(request_id)
            stream.put(LLMOutput(request_id=request_id, finish_reason="abort"))


def _joined(outputs: list[LLMOutput]) -> LLMOutput:
    """Consecutive outputs of one request as one: deltas concatenated, running totals the latest."""
    if len(outputs) == 1:
        return outputs[0]
    return replace(
        outputs[-1],
        text="".join(o.text for o in outputs),
        reasoning="".join(o.reasoning for o in outputs),
        logprobs=tuple(lp for o in outputs for lp in o.logprobs),
        token_ids=tuple(t for o in outputs for t in o.token_ids),
    )
