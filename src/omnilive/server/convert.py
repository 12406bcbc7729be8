"""API chat messages → the engine's typed `Message`s, with every media item decoded.

A media item may come as a data: URL, bare base64 (`input_audio`), a `file-...` id from
/v1/files, or (when the operator allows it) an http(s) URL. Decoding is CPU work in PyAV and
Pillow, so it runs in a worker thread; any failure names the part it came from, e.g.
param "messages[1].content[0]".
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Callable

from omnilive.types import (
    ContentPart,
    EngineRequest,
    Message,
    ResponseFormat,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
)
from omnilive.media.data_url import decode_base64, load_media_url, parse_data_url
from omnilive.media.decode import MediaKind, decode_audio, decode_image, decode_video, sniff_format
from omnilive.media.errors import MediaError
from omnilive.media.limits import MediaLimits
from omnilive.server.errors import APIError
from omnilive.server.files import FileStore
from omnilive.server.protocol import (
    AudioURLPart,
    ChatCompletionRequest,
    ChatMessage,
    FilePart,
    ImagePart,
    InputAudioPart,
    NamedToolChoice,
    TextPart,
    VideoURLPart,
)

_ROLES = {"developer": "system"}  # OpenAI's newer name for the system role


async def to_engine_request(
    request: ChatCompletionRequest, files: FileStore, limits: MediaLimits, voice: str | None
) -> EngineRequest:
    messages = []
    for i, message in enumerate(request.messages):
        messages.append(await _to_message(message, f"messages[{i}]", files, limits))
    return EngineRequest(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        messages=tuple(messages),
        sampling=sampling_params(request),
        modalities=("text", "audio") if request.wants_audio else ("text",),
        voice=voice,
        max_thinking_tokens=request.thinking_budget,
        min_thinking_tokens=request.min_thinking_tokens or 0,
        chat_template_kwargs=tuple(sorted((request.chat_template_kwargs or {}).items())),
        tools=tuple(Tool(t.function.name, t.function.description, json.dumps(t.function.parameters),
                         bool(t.function.strict)) for t in request.tools or ()),
        tool_choice=tool_choice(request),
        response_format=response_format(request),
    )


def tool_choice(request: ChatCompletionRequest) -> ToolChoice:
    """OpenAI's default: auto with tools, none without; parallel calls unless refused."""
    parallel = request.parallel_tool_calls is not False
    choice = request.tool_choice or ("auto" if request.tools else "none")
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("function", choice.function.name, parallel)
    return ToolChoice(choice, None, parallel)


def response_format(request: ChatCompletionRequest) -> ResponseFormat | None:
    given = request.response_format
    if given is None or given.type == "text":
        return None
    if given.type == "json_object":
        return ResponseFormat("json_object")
    return ResponseFormat("json_schema", json.dumps(given.json_schema.schema_))


def sampling_params(request: ChatCompletionRequest) -> SamplingParams:
    """Unset fields keep the engine's defaults."""
    given = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": max(request.top_k, 0) if request.top_k is not None else None,
        "repetition_penalty": request.repetition_penalty,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "logit_bias": tuple((int(k), float(v)) for k, v in request.logit_bias.items()) if request.logit_bias else None,
        "max_tokens": request.completion_limit,
        "seed": request.seed,
        "stop": request.stop_sequences,
        "logprobs": bool(request.logprobs),
        "top_logprobs": request.top_logprobs or 0,
    }
    return SamplingParams(**{name: value for name, value in given.items() if value is not None})


async def _to_message(message: ChatMessage, where: str, files: FileStore, limits: MediaLimits) -> Message:
    role = _ROLES.get(message.role, message.role)
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ())
    if message.content is None:  # an assistant turn that only carried audio or tool calls
        return Message(role=role, content=(), tool_calls=calls)
    if isinstance(message.content, str):
        return Message(role=role, content=(message.content,), tool_calls=calls, tool_call_id=message.tool_call_id)
    parts: list[ContentPart] = []
    for j, part in enumerate(message.content):
        param = f"{where}.content[{j}]"
        try:
            parts.append(await _to_part(part, files, limits, param))
        except MediaError as e:
            raise e.with_param(param) from None
    return Message(role=role, content=tuple(parts), tool_calls=calls, tool_call_id=message.tool_call_id)


async def _to_part(part, files: FileStore, limits: MediaLimits, param: str) -> ContentPart:
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, ImagePart):
        return await _decoded(decode_image, await _url_bytes(part.image_url.url, files, limits, param), limits)
    if isinstance(part, InputAudioPart):
        data = decode_base64(part.input_audio.data, limits.max_bytes)
        return await asyncio.to_thread(decode_audio, data, limits, part.input_audio.format)
    if isinstance(part, AudioURLPart):
        return await _decoded(decode_audio, await _url_bytes(part.audio_url.url, files, limits, param), limits)
    if isinstance(part, VideoURLPart):
        return await _decoded(decode_video, await _url_bytes(part.video_url.url, files, limits, param), limits)
    if isinstance(part, FilePart):
        return await _file_part(part, files, limits, param)
    raise TypeError(f"unhandled content part {type(part).__name__}")  # the protocol union is closed


async def _decoded(decode: Callable, data: bytes, limits: MediaLimits):
    return await asyncio.to_thread(decode, data, limits)


async def _url_bytes(url: str, files: FileStore, limits: MediaLimits, param: str) -> bytes:
    if url.startswith("file-"):
        return _stored_file(url, files, param)
    _, data = await load_media_url(url, limits)
    return data


def _stored_file(file_id: str, files: FileStore, param: str) -> bytes:
    stored = files.get(file_id)
    if stored is None:
        raise APIError(404, f"No such File object: {file_id}", param, "file_not_found")
    return files.read(file_id)


async def _file_part(part: FilePart, files: FileStore, limits: MediaLimits, param: str) -> ContentPart:
    """A `file` part holds any media: which decoder to use comes from the bytes themselves."""
    if part.file.file_id is not None:
        data = _stored_file(part.file.file_id, files, f"{param}.file.file_id")
    elif part.file.file_data.startswith("data:"):
        _, data = parse_data_url(part.file.file_data, limits.max_bytes)
    else:
        data = decode_base64(part.file.file_data, limits.max_bytes)
    decoders: dict[MediaKind, Callable] = {"image": decode_image, "audio": decode_audio, "video": _video_or_audio}
    sniffed = sniff_format(data)
    if sniffed is None:
        message = "unsupported file: not an image, audio or video format this server reads"
        raise MediaError(message, "unsupported_format")
    return await _decoded(decoders[sniffed.kind], data, limits)


def _video_or_audio(data: bytes, limits: MediaLimits):
    """mp4/webm/matroska may hold only sound (an .m4a is an mp4): then it is audio."""
    try:
        return decode_video(data, limits)
    except MediaError as video_error:
        try:
            return decode_audio(data, limits)
        except MediaError:
            raise video_error from None
