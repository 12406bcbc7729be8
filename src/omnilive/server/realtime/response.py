"""One model response of a Realtime session: engine outputs → the response.* event sequence.

    response.created
    response.output_item.added            conversation.item.added (beta: .created)
    response.content_part.added
    response.output_audio_transcript.delta + response.output_audio.delta ...   (audio)
    response.output_text.delta ...                                             (text only)
    response.output_audio.done, response.output_audio_transcript.done  (or output_text.done)
    response.content_part.done, response.output_item.done, conversation.item.done (GA)
    response.done                         status completed | cancelled | incomplete | failed

A function call the model makes is an output item of its own (`function_call`), added when
the engine names the function, then response.function_call_arguments.delta ... and, at the
end, response.function_call_arguments.done and its output_item.done. When tools are offered
the message item opens only once the model says something, so a reply that only calls has
just its calls in `output`, as OpenAI's does; without tools it opens at once.

Cancelling the task that runs `ResponseRun.run` (barge-in, response.cancel, disconnect) closes
the engine's iterator at once, which aborts the request in the engine; the items keep what
was already sent, and response.done says "cancelled".

A `Speculation` is an answer begun before its turn is committed: the engine's outputs are
held back (nothing reaches the client) until the committed turn's response takes them over,
or the user speaks again and they are thrown away with the engine request aborted.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from omnilive.types import (
    SPEECH_SAMPLE_RATE,
    AudioChunk,
    EngineError,
    EngineOutput,
    Finished,
    ReasoningDelta,
    TextDelta,
    Tool,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from omnilive.media.encode import pcm16_bytes
from omnilive.server.errors import APIError, error_body
from omnilive.server.metrics import Metrics
from omnilive.server.realtime.conversation import Content, Item
from omnilive.server.realtime.events import Dialect, new_id

log = logging.getLogger(__name__)

AUDIO_DELTA_SAMPLES = SPEECH_SAMPLE_RATE // 5  # 200 ms per audio delta: small enough to cut short


@dataclass(frozen=True)
class ResponsePlan:
    audio: bool
    voice: str
    instructions: str
    temperature: float | None
    max_output_tokens: int | None
    max_thinking_tokens: int | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)

    @property
    def offers_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.mode != "none"


AddItem = Callable[[Item], str | None]  # adds to the conversation; returns the previous item's id


class ResponseRun:
    def __init__(self, plan: ResponsePlan, item: Item, emit: Callable[..., None], dialect: Dialect, metrics: Metrics,
                 add_item: AddItem, response_id: str | None = None):
        self.id = response_id or new_id("resp")
        self.plan, self.item, self.emit, self.dialect, self.metrics = plan, item, emit, dialect, metrics
        self.add_item = add_item
        self.cancel_reason: str | None = None  # "turn_detected" | "client_cancelled", set by the canceller
        self.content = Content("output_audio" if plan.audio else "output_text")
        self.output: list[Item] = []  # the message item (`item`, once opened) and function calls, in order
        self.calls: dict[int, Item] = {}  # the engine's call index → its function_call item
        self.reasoning = ""  # a thinking model's reasoning: sent as its own events, never spoken
        self.started_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.first_audio_at: float | None = None

    def wire(self, status: str, usage: Usage | None = None, details: dict | None = None) -> dict:
        modalities = ["audio"] if self.plan.audio else ["text"]
        response = {
            "id": self.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [item.wire(self.dialect) for item in self.output] if status != "in_progress" else [],
            "usage": _usage_wire(usage) if usage is not None else None,
            "max_output_tokens": self.plan.max_output_tokens or "inf",
        }
        if self.dialect.beta:
            response.update(modalities=["text", "audio"] if self.plan.audio else ["text"], voice=self.plan.voice,
                            output_audio_format="pcm16")
        else:
            response.update(output_modalities=modalities, audio={"output": {
                "format": {"type": "audio/pcm", "rate": SPEECH_SAMPLE_RATE}, "voice": self.plan.voice}})
        return response

    def start(self) -> None:
        """The events that open the response (sent before the engine is asked anything)."""
        self.emit("response.created", response=self.wire("in_progress"))
        if not self.plan.offers_tools:
            self._open_message()

    @property
    def message_open(self) -> bool:
        return self.item in self.output  # items compare by identity

    def _add_output(self, item: Item) -> None:
        self.output.append(item)
        previous = self.add_item(item)
        self.emit("response.output_item.added", response_id=self.id, output_index=len(self.output) - 1,
                  item=item.wire(self.dialect))
        added = "conversation.item.created" if self.dialect.beta else "conversation.item.added"
        self.emit(added, previous_item_id=previous, item=item.wire(self.dialect))

    def _open_message(self) -> None:
        if self.message_open:
            return
        self._add_output(self.item)
        self.item.content.append(self.content)
        self.emit("response.content_part.added", **self._at(), part=self._part())

    async def run(self, outputs: Callable[[], AsyncIterator[EngineOutput]]) -> None:
        """Stream the engine's outputs as events; always ends with response.done."""
        status, usage, details = "cancelled", None, None
        self.metrics.running.inc()
        ended = "aborted"
        stream: AsyncIterator[EngineOutput] | None = None
        try:
            stream = outputs()
            async for out in stream:
                self.metrics.engine_outputs.inc()
                if (isinstance(out, TextDelta) and out.text or isinstance(out, ToolCallDelta)) and self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                    self.metrics.time_to_first_token.observe(self.first_token_at - self.started_at)
                if isinstance(out, AudioChunk) and self.plan.audio:
                    self._open_message()
                    self._send_audio(out)
                elif isinstance(out, ReasoningDelta) and out.text:
                    self._open_message()
                    self.reasoning += out.text
                    self.emit("response.reasoning_text.delta", **self._at(), delta=out.text)
                elif isinstance(out, TextDelta) and not self.plan.audio and out.text:
                    self._open_message()
                    self.content.text += out.text
                    self.emit("response.output_text.delta", **self._at(), delta=out.text)
                elif isinstance(out, ToolCallDelta):
                    self._call_delta(out)
                elif isinstance(out, Finished):
                    usage, ended = out.usage, out.finish_reason
                    self.metrics.prompt_tokens.inc(usage.prompt_tokens)
                    self.metrics.completion_tokens.inc(usage.completion_tokens)
                    status = "incomplete" if out.finish_reason == "length" else "completed"
                    if status == "incomplete":
                        details = {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            details = {"type": "cancelled", "reason": self.cancel_reason or "client_cancelled"}
        except EngineError as error:
            status, ended = "failed", "error"
            details = {"type": "failed", "error": {"type": "invalid_request_error", "code": error.code,
                                                   "message": error.message}}
        except APIError as error:  # a failure with its own status: a speech replica lost mid-reply (503)
            status, ended = "failed", "error"
            details = {"type": "failed", "error": {"type": error_body(error.status, error.message)["error"]["type"],
                                                   "code": error.code, "message": error.message}}
        except Exception as error:  # the session must outlive a failed response
            log.exception("realtime response failed")
            status, ended = "failed", "error"
            details = {"type": "failed", "error": {"type": "server_error", "code": "engine_error", "message": str(error)}}
        finally:
            if stream is not None:
                await asyncio.shield(stream.aclose())  # aborts the engine request if still running
            self.metrics.running.dec()
            self.metrics.finished.labels(ended).inc()
        self._finish(status, usage, details)

    def _call_delta(self, delta: ToolCallDelta) -> None:
        """The first piece of a call names it (a new function_call item); the rest extend its arguments."""
        if delta.id is not None:
            call = Item.function_call(new_id("item"), delta.id, delta.name or "", status="in_progress")
            self.calls[delta.index] = call
            self._add_output(call)
        call = self.calls[delta.index]
        if delta.arguments:
            call.arguments += delta.arguments
            self.emit("response.function_call_arguments.delta", response_id=self.id, item_id=call.id,
                      output_index=self.output.index(call), call_id=call.call_id, delta=delta.arguments)

    def _send_audio(self, chunk: AudioChunk) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
            self.metrics.time_to_first_audio.observe(self.first_audio_at - self.started_at)
        content = self.content
        if chunk.transcript:
            content.spoken.append((content.audio_samples, chunk.transcript))
            content.text += chunk.transcript
            self.emit("response.output_audio_transcript.delta", **self._at(), delta=chunk.transcript)
        for at in range(0, len(chunk.samples), AUDIO_DELTA_SAMPLES):
            piece = chunk.samples[at:at + AUDIO_DELTA_SAMPLES]
            content.audio_samples += len(piece)
            self.emit("response.output_audio.delta", **self._at(), delta=base64.b64encode(pcm16_bytes(piece)).decode())

    def _finish(self, status: str, usage: Usage | None, details: dict | None) -> None:
        item_status = "completed" if status == "completed" else "incomplete"
        for index, item in enumerate(self.output):
            item.status = item_status
            if item is self.item:
                self._finish_message()
            else:
                self.emit("response.function_call_arguments.done", response_id=self.id, item_id=item.id,
                          output_index=index, call_id=item.call_id, name=item.name, arguments=item.arguments)
            self.emit("response.output_item.done", response_id=self.id, output_index=index,
                      item=item.wire(self.dialect))
            if not self.dialect.beta:
                self.emit("conversation.item.done", item=item.wire(self.dialect))
        self.emit("response.done", response=self.wire(status, usage or Usage(), details))

    def _finish_message(self) -> None:
        if self.reasoning:
            self.emit("response.reasoning_text.done", **self._at(), text=self.reasoning)
        self.content.text = self.content.text.strip()
        if self.plan.audio:
            self.emit("response.output_audio.done", **self._at())
            self.emit("response.output_audio_transcript.done", **self._at(), transcript=self.content.text)
        else:
            self.emit("response.output_text.done", **self._at(), text=self.content.text)
        self.emit("response.content_part.done", **self._at(), part=self._part())

    def _at(self) -> dict:
        return {"response_id": self.id, "item_id": self.item.id, "output_index": self.output.index(self.item),
                "content_index": 0}

    def _part(self) -> dict:
        if self.plan.audio:
            return {"type": "audio", "transcript": self.content.text}
        return {"type": "text", "text": self.content.text}


_END = object()


class Speculation:
    """Engine outputs of an answer that may never be given, held until `take` or `discard`.

    key: (turn start ms, speech end ms) of the transcript it answers; history: the ids of the
    items it answers (the uncommitted turn last). Counted as a running engine request."""

    def __init__(self, response_id: str, key: tuple[int, int], history: list[str], plan: ResponsePlan,
                 outputs: AsyncIterator[EngineOutput], metrics: Metrics, spawn: Callable[..., asyncio.Task]):
        self.response_id, self.key, self.history, self.plan = response_id, key, history, plan
        self.metrics = metrics
        self._held: asyncio.Queue = asyncio.Queue()  # EngineOutput | Exception | _END
        self.metrics.running.inc()
        self._task = spawn(self._hold(outputs))

    def matches(self, key: tuple[int, int], history: list[str], plan: ResponsePlan) -> bool:
        return (self.key, self.history, self.plan) == (key, history, plan)

    def take(self) -> Callable[[], AsyncIterator[EngineOutput]]:
        """The outputs so far and to come, for the response that gives this answer."""
        self.metrics.running.dec()  # the response counts it from now on
        return self._outputs

    def discard(self) -> None:
        """Throw the answer away: the engine request is aborted, nothing of it was sent."""
        self.stop()
        self.metrics.running.dec()
        self.metrics.finished.labels("aborted").inc()

    def stop(self) -> None:
        """Abort the engine request if it still runs (closing the engine's iterator aborts it)."""
        self._task.cancel()

    async def _hold(self, outputs: AsyncIterator[EngineOutput]) -> None:
        try:
            async for out in outputs:
                self._held.put_nowait(out)
        except Exception as error:  # noqa: BLE001 - raised in the response, if it is ever taken
            self._held.put_nowait(error)
        finally:
            await outputs.aclose()
            self._held.put_nowait(_END)

    async def _outputs(self) -> AsyncIterator[EngineOutput]:
        try:
            while (out := await self._held.get()) is not _END:
                if isinstance(out, Exception):
                    raise out
                yield out
        finally:
            self.stop()  # the response ended early (barge-in, cancel): abort the request too
            await asyncio.wait([self._task])


def _usage_wire(usage: Usage) -> dict:
    return {
        "total_tokens": usage.total_tokens,
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "input_token_details": {"text_tokens": usage.prompt_tokens, "audio_tokens": 0,
                                "cached_tokens": usage.cached_prompt_tokens},
        "output_token_details": {"text_tokens": usage.completion_tokens, "audio_tokens": 0,
                                 "reasoning_tokens": usage.reasoning_tokens},
    }
