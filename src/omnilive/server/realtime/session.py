"""One Realtime session: its conversation, input audio buffer, VAD and response (settings: config.py).

    session = RealtimeSession(engine, metrics, media_limits, dialect, send=outbox.put_nowait)
    session.open()                       # session.created
    await session.handle(message_text)   # each client event, in order; errors become `error` events
    await session.close()                # the running response and transcriptions are stopped

Handlers never wait on the model: a response and each transcription run in their own tasks,
so audio keeps flowing through the VAD while the assistant talks (that is how barge-in works).

Speculation (server VAD): when a pause's early transcript is in and the user is still quiet,
the answer starts at once, held back; if the silence window closes on that same speech, the
committed turn's response takes the held outputs over, else they are discarded unheard.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging

import numpy as np

from omnilive.types import (
    ASR_SAMPLE_RATE,
    AudioInput,
    EngineRequest,
    Backend,
    SamplingParams,
)
from omnilive.media.data_url import decode_base64, parse_data_url
from omnilive.media.decode import decode_image
from omnilive.media.errors import MediaError
from omnilive.media.limits import MediaLimits
from omnilive.server.metrics import Metrics
from omnilive.server.realtime import events as ev
from omnilive.server.realtime.config import SessionConfig, response_plan, session_wire, updated_config
from omnilive.server.realtime.conversation import (
    Content,
    Conversation,
    Item,
    truncate_spoken,
)
from omnilive.server.realtime.events import Dialect, RealtimeError, new_id
from omnilive.server.realtime.response import ResponsePlan, ResponseRun, Speculation
from omnilive.server.realtime.turn import (
    PAUSE_MS,
    InputAudio,
    Paused,
    Resumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    TurnTranscriber,
)

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # as OpenAI: a shorter buffer cannot be committed
LANGUAGE_DETECTION_MIN_S = 1.0  # shorter speech is too little to trust the detected language
KEEP_BEFORE_SPEECH_MS = 1000  # audio kept while nobody speaks (covers any prefix padding asked)


class RealtimeSession:
    def __init__(self, engine: Backend, metrics: Metrics, media_limits: MediaLimits, dialect: Dialect,
                 send, max_event_bytes: int):
        self.engine, self.metrics, self.media_limits, self.dialect = engine, metrics, media_limits, dialect
        self._send, self.max_event_bytes = send, max_event_bytes
        self.id = new_id("sess")
        self.config = SessionConfig(voice=engine.card.default_voice)
        self.conversation = Conversation()
        self.audio = InputAudio()
        self._tasks: set[asyncio.Task] = set()  # transcriptions in flight
        self.transcriber = TurnTranscriber(self._transcribe, self._spawn, on_guess=self._speculate)
        self.detector: TurnDetector | None = None
        self._turn: tuple[str, int] | None = None  # (item id, audio start ms) of the turn being spoken
        self.response: ResponseRun | None = None
        self._response_task: asyncio.Task | None = None
        self.speculation: Speculation | None = None  # an answer to the paused turn, not yet given
        self._heard_language: str | None = None
        self._reset_detector()

    # -- plumbing -----------------------------------------------------------------------------

    def emit(self, ga_name: str, **fields) -> None:
        self._send({"type": self.dialect.event(ga_name), "event_id": new_id("event"), **fields})

    def open(self) -> None:
        self.emit("session.created", session=self._session_wire())

    async def handle(self, raw: str | bytes) -> None:
        event_id = None
        try:
            if len(raw) > self.max_event_bytes:
                raise RealtimeError(f"The event is {len(raw)} bytes; the limit is {self.max_event_bytes}.",
                                    "event_too_large")
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RealtimeError("The event is not valid JSON.", "invalid_json") from None
            if isinstance(data, dict) and isinstance(data.get("event_id"), str):
                event_id = data["event_id"]
            event = ev.parse_client_event(data)
            if event.type != "input_audio_buffer.append":
                self._drop_speculation()  # the conversation or settings it answers may change
            handler = getattr(self, "_on_" + event.type.replace(".", "_"))
            await handler(event)
        except RealtimeError as error:
            self._send(ev.error_event(error, event_id))

    async def close(self) -> None:
        self._drop_speculation()
        await self._cancel_response("client_cancelled")
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- session --------------------------------------------------------------------------------

    def _session_wire(self) -> dict:
        return session_wire(self.config, self.id, self.engine.card, self.dialect)

    async def _on_session_update(self, event: ev.SessionUpdate) -> None:
        old = self.config
        self.config = updated_config(old, event.session)
        if self.config.turn_detection != old.turn_detection:
            self._reset_detector()
        self.emit("session.updated", session=self._session_wire())

    def _reset_detector(self) -> None:
        td = self.config.turn_detection
        self._turn = None
        self.transcriber.drop()
        self.detector = None if td is None else TurnDetector(
            td.threshold, td.prefix_padding_ms, td.silence_duration_ms, start_ms=self.audio.end_ms)

    # -- input audio ------------------------------------------------------------------------------

    async def _on_input_audio_buffer_append(self, event: ev.InputAudioBufferAppend) -> None:
        pcm = _base64(event.audio, self.media_limits.max_bytes, "audio")
        try:
            samples = self.audio.append(pcm)
        except OverflowError as error:
            raise RealtimeError(str(error), "input_audio_buffer_full") from None
        if self.detector is None:
            return
        for turn_event in self.detector.feed(samples):
            if isinstance(turn_event, SpeechStarted):
                await self._speech_started(turn_event)
            elif isinstance(turn_event, Paused) and self._turn is not None:
                start = self._turn[1]
                end = turn_event.speech_end_ms
                self.transcriber.guess(start, end, self.audio.audio(start, end + PAUSE_MS))
            elif isinstance(turn_event, Resumed):
                self.transcriber.resumed()
                self._drop_speculation()
            elif isinstance(turn_event, SpeechStopped) and self._turn is not None:
                self._speech_stopped(turn_event)
        if self._turn is None:
            self.audio.drop_until(self.audio.end_ms - KEEP_BEFORE_SPEECH_MS)

    async def _speech_started(self, event: SpeechStarted) -> None:
        item_id = new_id("item")
        self._turn = (item_id, max(event.audio_start_ms, self.audio.start_ms))
        self.emit("input_audio_buffer.speech_started", audio_start_ms=event.audio_start_ms, item_id=item_id)
        if self.response is not None and self.config.turn_detection.interrupt_response:
            await self._cancel_response("turn_detected")  # barge-in

    def _speech_stopped(self, event: SpeechStopped) -> None:
        (item_id, start), self._turn = self._turn, None
        self.emit("input_audio_buffer.speech_stopped", audio_end_ms=event.audio_end_ms, item_id=item_id)
        speech = self.audio.audio(start, event.speech_end_ms + PAUSE_MS)
        transcript = self.transcriber.final(start, event.speech_end_ms, speech)
        self.audio.drop_until(event.audio_end_ms)
        self._commit(item_id, transcript)
        speculation, self.speculation = self.speculation, None
        if self.config.turn_detection.create_response and self.response is None:
            request = ev.ResponseIn()
            history = [item.id for item in self.conversation.items]
            plan = response_plan(self.config, request)
            if speculation is not None and speculation.matches((start, event.speech_end_ms), history, plan):
                self._start_response(request, speculation)
                return
            self._start_response(request)
        if speculation is not None:
            speculation.discard()

    def _speculate(self, start_ms: int, speech_end_ms: int, transcript: str) -> None:
        """A pause's transcript is in: answer it now if the user is still quiet, holding the answer back."""
        td = self.config.turn_detection
        if (not transcript or td is None or not td.create_response or self.response is not None
                or self.speculation is not None or self._turn is None or self._turn[1] != start_ms
                or self.detector is None or self.detector.paused_at != speech_end_ms):
            return
        turn = Item(self._turn[0], "user", [Content("input_audio", text=transcript)])
        history = [*self.conversation.items, turn]  # as the committed turn will leave it
        plan = response_plan(self.config, ev.ResponseIn())
        response_id = new_id("resp")
        self.speculation = Speculation(response_id, (start_ms, speech_end_ms), [item.id for item in history], plan,
                                       self._answer(response_id, plan, history), self.metrics, self._spawn)

    def _drop_speculation(self) -> None:
        speculation, self.speculation = self.speculation, None
        if speculation is not None:
            speculation.discard()

    async def _on_input_audio_buffer_commit(self, event: ev.InputAudioBufferCommit) -> None:
        if self.audio.duration_ms < MIN_COMMIT_MS:
            raise RealtimeError(
                f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, but the buffer holds "
                f"{self.audio.duration_ms} ms.", "input_audio_buffer_commit_empty")
        item_id = self._turn[0] if self._turn is not None else new_id("item")
        speech = self.audio.audio()
        self.audio.clear()
        self._reset_detector()
        self._commit(item_id, self._spawn(self._transcribe(speech)))

    async def _on_input_audio_buffer_clear(self, event: ev.InputAudioBufferClear) -> None:
        self.audio.clear()
        self._reset_detector()
        self.emit("input_audio_buffer.cleared")

    def _commit(self, item_id: str, transcript: asyncio.Task) -> None:
        content = Content("input_audio", transcribed=False)
        item = Item(item_id, "user", [content])
        content.transcript = self._spawn(self._deliver_transcript(item, content, transcript))
        previous = self.conversation.add(item)
        self.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self._announce(item, previous, done=False)

    async def _deliver_transcript(self, item: Item, content: Content, transcript: asyncio.Task) -> None:
        try:
            content.text, content.transcribed = await transcript, True
            self.emit("conversation.item.input_audio_transcription.completed", item_id=item.id,
                      content_index=item.content.index(content),
                      transcript=content.text, usage={"type": "duration", "seconds": 0.0})
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the turn stays, without words; the session goes on
            log.exception("transcription failed")
            content.transcribed = True
            self.emit("conversation.item.input_audio_transcription.failed", item_id=item.id,
                      content_index=item.content.index(content),
                      error={"type": "server_error", "code": "transcription_failed", "message": str(error)})
        if not self.dialect.beta:
            self.emit("conversation.item.done", item=item.wire(self.dialect))

    async def _transcribe(self, samples: np.ndarray) -> str:
        if len(samples) < ASR_SAMPLE_RATE // 10:
            return ""
        # Language detection costs Whisper a second pass (~0.6 s here): after one confident turn,
        # assume the user keeps speaking that language unless the session names one.
        language = self.config.language or self._heard_language
        result = await self.engine.transcribe(AudioInput(samples), language, self.config.transcription_prompt)
        if language is None and len(samples) >= LANGUAGE_DETECTION_MIN_S * ASR_SAMPLE_RATE and result.text.strip():
            self._heard_language = result.language
        return result.text.strip()

    def _announce(self, item: Item, previous: str | None, done: bool = True) -> None:
        if self.dialect.beta:
            self.emit("conversation.item.created", previous_item_id=previous, item=item.wire(self.dialect))
            return
        self.emit("conversation.item.added", previous_item_id=previous, item=item.wire(self.dialect))
        if done:
            self.emit("conversation.item.done", previous_item_id=previous, item=item.wire(self.dialect))

    # -- conversation -------------------------------------------------------------------------------

    async def _on_conversation_item_create(self, event: ev.ConversationItemCreate) -> None:
        source = event.item
        if source.type != "message":
            item = self.conversation.call_item(source.id or new_id("item"), source)
            self._announce(item, self.conversation.add(item, event.previous_item_id))
            return
        contents = [self._content(part, source.role, f"item.content[{i}]") for i, part in enumerate(source.content)]
        if not contents:
            raise RealtimeError("A message item needs at least one content part.", "invalid_value", "item.content")
        item = Item(source.id or new_id("item"), source.role, [c for c, _ in contents])
        for content, pcm in contents:
            if pcm is not None:
                audio = InputAudio()
                speech = audio.append(pcm)
                content.transcript = self._spawn(self._deliver_transcript(item, content, self._spawn(self._transcribe(speech))))
        previous = self.conversation.add(item, event.previous_item_id)
        self._announce(item, previous, done=not any(pcm is not None for _, pcm in contents))

    def _content(self, part: ev.ContentIn, role: str, where: str) -> tuple[Content, bytes | None]:
        allowed = {"user": ("input_text", "input_audio", "input_image"), "system": ("input_text",),
                   "assistant": ("text", "output_text", "audio", "output_audio")}[role]
        if part.type not in allowed:
            raise RealtimeError(f"A {role} item cannot hold '{part.type}' content.", "invalid_value", where + ".type")
        if part.type == "input_image":
            if not part.image_url:
                raise RealtimeError("input_image needs an image_url (a data: URL).", "invalid_value", where + ".image_url")
            try:
                _, data = parse_data_url(part.image_url, self.media_limits.max_bytes)
                return Content("input_image", image=decode_image(data, self.media_limits)), None
            except MediaError as error:
                raise RealtimeError(error.message, error.code, where + ".image_url") from None
        if part.type == "input_audio":
            if not part.audio:
                raise RealtimeError("input_audio needs base64 PCM16 audio.", "invalid_value", where + ".audio")
            return Content("input_audio", transcribed=False), _base64(part.audio, self.media_limits.max_bytes, where + ".audio")
        if part.type in ("audio", "output_audio"):
            return Content("output_audio", text=part.transcript or part.text or ""), None
        if part.type in ("text", "output_text"):
            return Content("output_text", text=part.text or ""), None
        return Content("input_text", text=part.text or ""), None

    async def _on_conversation_item_truncate(self, event: ev.ConversationItemTruncate) -> None:
        item = self.conversation.find(event.item_id)
        if item.role != "assistant" or event.content_index >= len(item.content) \
                or item.content[event.content_index].kind != "output_audio":
            raise RealtimeError("Only an assistant item's audio content can be truncated.", "invalid_value",
                                "content_index")
        if self.response is not None and self.response.item is item:
            await self._cancel_response("client_cancelled")
        truncate_spoken(item.content[event.content_index], event.audio_end_ms)
        self.emit("conversation.item.truncated", item_id=item.id, content_index=event.content_index,
                  audio_end_ms=event.audio_end_ms)

    async def _on_conversation_item_delete(self, event: ev.ConversationItemDelete) -> None:
        item = self.conversation.find(event.item_id)
        if self.response is not None and (self.response.item is item or item in self.response.output):
            await self._cancel_response("client_cancelled")
        self.conversation.delete(item.id)
        self.emit("conversation.item.deleted", item_id=item.id)

    async def _on_conversation_item_retrieve(self, event: ev.ConversationItemRetrieve) -> None:
        self.emit("conversation.item.retrieved", item=self.conversation.find(event.item_id).wire(self.dialect))

    # -- responses ------------------------------------------------------------------------------------

    async def _on_response_create(self, event: ev.ResponseCreate) -> None:
        if self.response is not None:
            raise RealtimeError(f"Conversation already has an active response in progress: {self.response.id}.",
                                "conversation_already_has_active_response")
        self._start_response(event.response or ev.ResponseIn())

    async def _on_response_cancel(self, event: ev.ResponseCancel) -> None:
        if self.response is None or (event.response_id and event.response_id != self.response.id):
            raise RealtimeError("Cancellation failed: no active response found.", "response_cancel_not_active")
        await self._cancel_response("client_cancelled")

    def _start_response(self, request: ev.ResponseIn, speculation: Speculation | None = None) -> None:
        """Start a response; with a matching `speculation`, it gives that answer, already begun."""
        self._drop_speculation()
        plan = response_plan(self.config, request)
        item = Item(new_id("item"), "assistant", [], status="in_progress")
        response_id = speculation.response_id if speculation is not None else None
        run = ResponseRun(plan, item, self.emit, self.dialect, self.metrics, self.conversation.add, response_id)
        history = list(self.conversation.items)  # what this reply answers
        run.start()
        outputs = speculation.take() if speculation is not None else lambda: self._answer(run.id, plan, history)

        self.response = run
        self._response_task = asyncio.create_task(run.run(outputs))
        self._response_task.add_done_callback(lambda _: self._response_ended(run, speculation))

    async def _answer(self, response_id: str, plan: ResponsePlan, history: list[Item]):
        messages = await self.conversation.messages(plan.instructions, history)
        sampling = SamplingParams(max_tokens=plan.max_output_tokens) if plan.temperature is None else \
            SamplingParams(temperature=plan.temperature, max_tokens=plan.max_output_tokens)
        request = EngineRequest(response_id, messages, sampling, ("text", "audio") if plan.audio else ("text",),
                                plan.voice, max_thinking_tokens=plan.max_thinking_tokens, tools=plan.tools,
                                tool_choice=plan.tool_choice)
        async with contextlib.aclosing(self.engine.generate(request)) as stream:  # closing aborts the request
            async for out in stream:
                yield out

    def _response_ended(self, run: ResponseRun, speculation: Speculation | None) -> None:
        if speculation is not None:
            speculation.stop()  # in case the response was cancelled before it read a thing
        if self.response is run:
            self.response, self._response_task = None, None

    async def _cancel_response(self, reason: str) -> None:
        run, task = self.response, self._response_task
        if run is None or task is None:
            return
        run.cancel_reason = reason
        task.cancel()
        await asyncio.wait([task])  # its response.done (cancelled) is sent before we go on


def _base64(text: str, max_bytes: int, param: str) -> bytes:
    try:
        return decode_base64(text, max_bytes)
    except MediaError as error:
        code = "invalid_base64" if error.code == "invalid_data_url" else error.code
        raise RealtimeError(error.message.replace("media data", "audio"), code, param) from None
    except binascii.Error:
        raise RealtimeError("audio is not valid base64", "invalid_base64", param) from None

