"""POST /v1/audio/transcriptions (speech → text) and POST /v1/audio/speech (text → speech).

Besides the served model's own id, OpenAI's model names for these endpoints are accepted
(whisper-1, tts-1...), so existing clients work unchanged; they all mean this server's ASR/TTS.

Speech streams sentence by sentence where the format allows it: pcm, wav (header with the
"unknown length" sizes) and aac (ADTS frames concatenate). mp3, opus and flac are containers
whose independently encoded pieces do not concatenate, so they are encoded once, at the end.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Annotated, AsyncIterator, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from omnilive.types import SPEECH_SAMPLE_RATE, Transcript, TranscriptSegment
from omnilive.media.decode import decode_audio
from omnilive.media.encode import audio_mime, encode_audio, pcm16_bytes
from omnilive.media.errors import MediaError
from omnilive.server.errors import APIError
from omnilive.server.protocol import SpeechRequest
from omnilive.server.responses import ClosingStreamingResponse
from omnilive.server.routes.models import check_model

router = APIRouter()

TRANSCRIPTION_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
SPEECH_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
STREAMABLE_FORMATS = frozenset({"pcm", "wav", "aac"})

TranscriptFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[TranscriptFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=0)] = 0.0,  # greedy only: stable, and no fallback re-decodes
):
    await _check_form_fields(request)
    check_model(request, model, TRANSCRIPTION_MODELS)
    limits = request.app.state.media_limits
    data = await file.read()
    try:
        audio = await asyncio.to_thread(decode_audio, data, limits, file.content_type)
    except MediaError as e:
        raise e.with_param("file") from None
    transcript = await request.app.state.engine.transcribe(audio, language or None, prompt or None)
    return _transcript_response(transcript, response_format)


TRANSCRIPTION_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature"}


async def _check_form_fields(request: Request) -> None:
    """A form field this server does not honour is a 400, never silently dropped; segment
    timestamps come with verbose_json, so asking for them is fine."""
    form = await request.form()
    for name in form.keys():
        if name in ("timestamp_granularities[]", "timestamp_granularities"):
            if any(value != "segment" for value in form.getlist(name)):
                raise APIError(400, "only segment timestamps are available (response_format verbose_json)",
                               name, "unsupported_value")
        elif name not in TRANSCRIPTION_FIELDS:
            raise APIError(400, f"Unrecognized request argument supplied: {name}", name, "unrecognized_argument")


def _transcript_response(transcript: Transcript, response_format: TranscriptFormat):
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format == "json":
        usage = {"type": "duration", "seconds": round(transcript.duration_s, 3)}
        return JSONResponse({"text": transcript.text, "usage": usage})
    segments = transcript.segments or (TranscriptSegment(0.0, transcript.duration_s, transcript.text),)
    if response_format == "verbose_json":
        return JSONResponse({
            "task": "transcribe",
            "language": transcript.language,
            "duration": transcript.duration_s,
            "text": transcript.text,
            "segments": [
                {"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(segments)
            ],
        })
    if response_format == "srt":
        cues = [f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
                for i, s in enumerate(segments, 1)]
        return PlainTextResponse("\n".join(cues))
    cues = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return PlainTextResponse("WEBVTT\n\n" + "\n".join(cues), media_type="text/vtt")


def _timestamp(seconds: float, decimal_mark: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_mark}{millis:03d}"


@router.post("/v1/audio/speech")
async def speech(body: SpeechRequest, request: Request):
    check_model(request, body.model, SPEECH_MODELS)
    limit = request.app.state.settings.max_speech_input_chars
    if len(body.input) > limit:
        message = f"input is {len(body.input)} characters; the limit is {limit}."
        raise APIError(400, message, "input", "string_above_max_length")
    chunks = request.app.state.engine.synthesize(body.input, body.voice, body.speed)
    try:  # the first chunk before answering: an unknown voice becomes a 400, not a broken 200
        first = await anext(chunks)
    except BaseException:
        await chunks.aclose()
        raise
    fmt = body.response_format
    encoded = _stream_encoded(first, chunks, fmt) if fmt in STREAMABLE_FORMATS else _encode_at_end(first, chunks, fmt)
    return ClosingStreamingResponse(encoded, media_type=audio_mime(fmt))


async def _stream_encoded(first: np.ndarray, rest: AsyncIterator[np.ndarray], fmt: str) -> AsyncIterator[bytes]:
    try:
        if fmt == "wav":
            yield _streaming_wav_header(SPEECH_SAMPLE_RATE)
        for_format = pcm16_bytes if fmt in ("pcm", "wav") else (lambda s: encode_audio(s, SPEECH_SAMPLE_RATE, fmt))
        yield await asyncio.to_thread(for_format, first)
        async for samples in rest:
            yield await asyncio.to_thread(for_format, samples)
    finally:
        await rest.aclose()


async def _encode_at_end(first: np.ndarray, rest: AsyncIterator[np.ndarray], fmt: str) -> AsyncIterator[bytes]:
    try:
        pieces = [first] + [samples async for samples in rest]
    finally:
        await rest.aclose()
    yield await asyncio.to_thread(encode_audio, np.concatenate(pieces), SPEECH_SAMPLE_RATE, fmt)


def _streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown length" (0xFFFFFFFF), as streamed WAVs do."""
    unknown = 0xFFFFFFFF
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return struct.pack("<4sI4s", b"RIFF", unknown, b"WAVE") + fmt_chunk + struct.pack("<4sI", b"data", unknown)
