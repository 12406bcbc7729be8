"""POST /v1/chat/completions, streaming (SSE) and not.

One path makes both: engine outputs → `ChatCompletionChunk`s. Streaming sends them as
server-sent events; non-streaming joins the same chunks into one `ChatCompletion`, so the two
cannot disagree. Streamed audio is base64 PCM16 at 24 kHz; joined audio is encoded in the
requested `audio.format`.

Aborting: the chunk generator closes the engine's iterator in `finally` (which aborts the
request in the engine); `ClosingStreamingResponse` makes sure the generator is closed as soon
as a streaming client goes away, and a non-streaming request is cancelled the same way when
its client disconnects while it waits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import APIRouter, Request

from omnilive.types import (
    SPEECH_SAMPLE_RATE,
    AudioChunk,
    EngineError,
    EngineOutput,
    Finished,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from omnilive.media.encode import encode_audio, pcm16_bytes, pcm16_to_float
from omnilive.server.convert import to_engine_request
from omnilive.server.errors import APIError, error_body
from omnilive.server.metrics import Metrics
from omnilive.server.protocol import ChatCompletionRequest
from omnilive.server.responses import (
    SSE_DONE,
    AssistantMessageOut,
    AudioDelta,
    AudioOut,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ClosingStreamingResponse,
    CompletionTokensDetails,
    Delta,
    FunctionCallDelta,
    FunctionCallOut,
    PromptTokensDetails,
    TokenLogprobOut,
    ToolCallDeltaOut,
    ToolCallOut,
    TopLogprob,
    UsageOut,
    sse,
)
from omnilive.server.routes.files import files_of
from omnilive.server.routes.models import check_model

log = logging.getLogger(__name__)
router = APIRouter()

AUDIO_EXPIRY_S = 3600  # how long an audio id is said to stay valid (we keep no audio server-side)
DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class StreamMeta:
    id: str
    created: int
    model: str
    audio_id: str
    received_at: float  # perf_counter when the request arrived, for latency metrics


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    received_at = time.perf_counter()
    state = request.app.state
    card = check_model(request, body.model)
    voice = body.audio.voice if body.audio is not None else None
    engine_request = await to_engine_request(body, files_of(request), state.media_limits, voice)  # the caller's files
    meta = StreamMeta(engine_request.request_id, int(time.time()), card.id, f"audio_{uuid.uuid4().hex}", received_at)

    outputs = state.engine.generate(engine_request)
    # Pull the first output before answering: an EngineError raised at the start (prompt too
    # long, unknown voice) then becomes a proper 400 instead of an error inside a 200 stream.
    try:
        first = await anext(outputs)
    except BaseException:
        await outputs.aclose()
        raise
    chunks = completion_chunks(_prepend(first, outputs), meta, state.metrics)

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return ClosingStreamingResponse(
            sse_events(chunks, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    collected = await _unless_disconnected(request, _collect(chunks))
    audio_format = body.audio.format if body.audio is not None else "wav"
    return await join_chunks(collected, audio_format)


async def completion_chunks(
    outputs: AsyncIterator[EngineOutput], meta: StreamMeta, metrics: Metrics
) -> AsyncIterator[ChatCompletionChunk]:
    """Engine outputs → chunks: a role chunk, deltas, a finish chunk, then a usage chunk."""

    def chunk(delta: Delta, **choice) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=meta.id, created=meta.created, model=meta.model, choices=[ChunkChoice(delta=delta, **choice)]
        )

    metrics.running.inc()
    ended, first_token_seen, first_audio_seen = "aborted", False, False
    try:
        yield chunk(Delta(role="assistant", content=""))
        async for out in outputs:
            metrics.engine_outputs.inc()
            if isinstance(out, (TextDelta, ReasoningDelta)) and not first_token_seen:
                first_token_seen = True
                metrics.time_to_first_token.observe(time.perf_counter() - meta.received_at)
            if isinstance(out, TextDelta):
                logprobs = ChoiceLogprobs(content=[_logprob_out(lp) for lp in out.logprobs]) if out.logprobs else None
                yield chunk(Delta(content=out.text), logprobs=logprobs)
            elif isinstance(out, ReasoningDelta):
                yield chunk(Delta(reasoning_content=out.text))
            elif isinstance(out, ToolCallDelta):
                yield chunk(Delta(tool_calls=[_tool_call_delta(out)]))
            elif isinstance(out, AudioChunk):
                if not first_audio_seen:
                    first_audio_seen = True
                    metrics.time_to_first_audio.observe(time.perf_counter() - meta.received_at)
                data = base64.b64encode(pcm16_bytes(out.samples)).decode()
                audio = AudioDelta(id=meta.audio_id, data=data, transcript=out.transcript,
                                   expires_at=meta.created + AUDIO_EXPIRY_S)
                yield chunk(Delta(audio=audio))
            elif isinstance(out, Finished):
                ended = out.finish_reason
                metrics.prompt_tokens.inc(out.usage.prompt_tokens)
                metrics.completion_tokens.inc(out.usage.completion_tokens)
                finish_reason = out.finish_reason if out.finish_reason in ("length", "tool_calls") else "stop"
                yield chunk(Delta(), finish_reason=finish_reason)
                yield ChatCompletionChunk(
                    id=meta.id, created=meta.created, model=meta.model, choices=[], usage=_usage_out(out.usage)
                )
                return
    except Exception:
        ended = "error"
        raise
    finally:
        metrics.running.dec()
        metrics.finished.labels(ended).inc()
        await outputs.aclose()  # aborts the engine request if it is still running


async def sse_events(chunks: AsyncIterator[ChatCompletionChunk], include_usage: bool) -> AsyncIterator[bytes]:
    """Chunks as SSE; a failure mid-stream becomes an error event (the status line is long gone)."""
    try:
        async for chunk in chunks:
            if chunk.usage is None or include_usage:  # the usage chunk only when asked for
                yield sse(chunk.to_json())
    except EngineError as e:
        yield sse(json.dumps(error_body(400, e.message, e.param, e.code)))
    except APIError as e:  # a server-side failure with its own status (a speech replica lost: 503)
        yield sse(json.dumps(error_body(e.status, e.message, e.param, e.code)))
    except Exception:
        log.exception("chat stream failed")
        yield sse(json.dumps(error_body(500, "The server had an error while generating.", None, "internal_error")))
    finally:
        await chunks.aclose()
    yield SSE_DONE


async def join_chunks(chunks: list[ChatCompletionChunk], audio_format: str) -> ChatCompletion:
    """The non-streaming response: exactly what the stream said, joined."""
    head, usage = chunks[0], chunks[-1].usage
    deltas = [c.choices[0] for c in chunks if c.choices]
    content = "".join(c.delta.content or "" for c in deltas)
    reasoning = "".join(c.delta.reasoning_content or "" for c in deltas)
    tokens = [lp for c in deltas if c.logprobs is not None for lp in c.logprobs.content or ()]
    has_logprobs = any(c.logprobs is not None for c in deltas)
    finish_reason = next(c.finish_reason for c in reversed(deltas) if c.finish_reason is not None)

    audio_deltas = [c.delta.audio for c in deltas if c.delta.audio is not None]
    audio = None
    if audio_deltas:
        pcm = b"".join(base64.b64decode(a.data) for a in audio_deltas)
        encoded = await asyncio.to_thread(encode_audio, pcm16_to_float(pcm), SPEECH_SAMPLE_RATE, audio_format)
        audio = AudioOut(
            id=audio_deltas[0].id,
            data=base64.b64encode(encoded).decode(),
            transcript="".join(a.transcript for a in audio_deltas),
            expires_at=audio_deltas[0].expires_at,
            format=audio_format,
        )
    tool_calls = _joined_tool_calls([call for c in deltas for call in c.delta.tool_calls or ()])
    message = AssistantMessageOut(content=content if content or not tool_calls else None,
                                  reasoning_content=reasoning or None, tool_calls=tool_calls or None, audio=audio)
    choice = Choice(
        message=message,
        logprobs=ChoiceLogprobs(content=tokens) if has_logprobs else None,
        finish_reason=finish_reason,
    )
    return ChatCompletion(id=head.id, created=head.created, model=head.model, choices=[choice], usage=usage)


def _tool_call_delta(out: ToolCallDelta) -> ToolCallDeltaOut:
    """OpenAI's streamed shape: the first piece has id, type and name (and empty arguments)."""
    if out.id is not None:
        return ToolCallDeltaOut(index=out.index, id=out.id, type="function",
                                function=FunctionCallDelta(name=out.name, arguments=out.arguments))
    return ToolCallDeltaOut(index=out.index, function=FunctionCallDelta(arguments=out.arguments))


def _joined_tool_calls(pieces: list[ToolCallDeltaOut]) -> list[ToolCallOut]:
    calls: dict[int, ToolCallOut] = {}
    for piece in pieces:
        if piece.id is not None:
            calls[piece.index] = ToolCallOut(id=piece.id, function=FunctionCallOut(name=piece.function.name or "",
                                                                                    arguments=""))
        calls[piece.index].function.arguments += piece.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def _usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=usage.reasoning_tokens),
        prompt_tokens_details=PromptTokensDetails(
            audio_tokens=usage.audio_prompt_tokens, image_tokens=usage.image_prompt_tokens,
            cached_tokens=usage.cached_prompt_tokens,
        ),
    )


def _logprob_out(lp: TokenLogprob) -> TokenLogprobOut:
    return TokenLogprobOut(
        token=lp.token,
        logprob=lp.logprob,
        bytes=list(lp.bytes),
        top_logprobs=[TopLogprob(token=t, logprob=p, bytes=list(b)) for t, p, b in lp.top],
    )


async def _prepend(first: EngineOutput, rest: AsyncIterator[EngineOutput]) -> AsyncIterator[EngineOutput]:
    try:
        yield first
        async for out in rest:
            yield out
    finally:
        await rest.aclose()


async def _collect(chunks: AsyncIterator[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    try:
        collected = [chunk async for chunk in chunks]
    finally:
        await chunks.aclose()
    if not collected or collected[-1].usage is None:
        raise APIError(500, "The engine ended the response without finishing it.", None, "internal_error")
    return collected


async def _unless_disconnected(request: Request, work):
    """Await `work`, cancelling it (and so aborting the engine request) if the client leaves."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "Client closed the request.", None, "client_closed_request")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
