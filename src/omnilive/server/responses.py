"""The OpenAI wire format of what the server sends: chat completions and their stream chunks,
model and file objects, and server-sent events."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from omnilive.server.protocol import AudioOutputFormat


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None


class AudioDelta(BaseModel):
    id: str
    data: str  # base64 PCM16 little-endian, 24 kHz mono
    transcript: str
    expires_at: int


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaOut(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None
    audio: AudioDelta | None = None


FinishReasonOut = Literal["stop", "length", "tool_calls"]


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReasonOut | None = None


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    audio_tokens: int = 0
    image_tokens: int = 0  # extension
    cached_tokens: int = 0


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails
    prompt_tokens_details: PromptTokensDetails


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None

    def to_json(self) -> str:
        body = self.model_dump()
        for choice in body["choices"]:  # deltas carry only what changed, as OpenAI's do
            choice["delta"] = _without_nones(choice["delta"])
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _without_nones(value):
    if isinstance(value, dict):
        return {key: _without_nones(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nones(item) for item in value]
    return value


class AudioOut(BaseModel):
    id: str
    data: str  # base64, in the requested format
    transcript: str
    expires_at: int
    format: AudioOutputFormat  # extension: what `data` holds


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    audio: AudioOut | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReasonOut


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut



class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # extensions: what the model is made of and what it takes and gives
    parts: list[dict]
    context_length: int
    voices: list[str]
    default_voice: str
    input_modalities: list[str]
    output_modalities: list[str]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    content_type: str | None = None  # extension


# -- server-sent events -----------------------------------------------------------------------


def sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


SSE_DONE = sse("[DONE]")


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, however the response ends.

    Starlette cancels the sending task when the client disconnects; if that happens while the
    generator is parked at a `yield`, nothing closes it and the engine would keep generating
    until garbage collection. Closing it here runs the generator's `finally` (which aborts the
    engine request) at once.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
