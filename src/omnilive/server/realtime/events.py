"""Realtime API events: pydantic models of what clients send, and the names of what we send.

Clients speak one of two dialects of the same protocol, chosen at connect time:

    GA   (default)                          beta (`OpenAI-Beta: realtime=v1`)
    response.output_audio.delta             response.audio.delta
    response.output_audio_transcript.delta  response.audio_transcript.delta
    response.output_text.delta              response.text.delta
    conversation.item.added / .done         conversation.item.created
    content "output_audio" / "output_text"  content "audio" / "text"
    session.audio.input.turn_detection      session.turn_detection   (flat session shape)
    tool_choice {"type": "function", ...}   tool_choice "<function name>"   (echoed as a string)

Both dialects give tools in the same flat shape ({"type": "function", "name", "description",
"parameters"}), and call them with the same events (response.function_call_arguments.*).

Client events are parsed leniently about fields we do not use (noise reduction, tracing...)
and strictly about the ones we do: a wrong type or value is an `error` event, never a crash.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class RealtimeError(Exception):
    """A client event we cannot act on: sent back as an `error` event; the session goes on."""

    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"  # OpenAI ids are at most 32 characters


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- session configuration (both shapes) ----------------------------------------------------------


class TurnDetectionIn(_In):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"  # semantic_vad runs as server_vad
    threshold: float | None = Field(None, gt=0.0, lt=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=32, le=10_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None


class AudioFormatIn(_In):
    """GA shape: {"type": "audio/pcm", "rate": 24000}."""

    type: str = "audio/pcm"
    rate: int | None = None


AudioFormat = AudioFormatIn | str  # beta shape: "pcm16"


class TranscriptionIn(_In):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class AudioInputIn(_In):
    format: AudioFormat | None = None
    turn_detection: TurnDetectionIn | None = None
    transcription: TranscriptionIn | None = None


class AudioOutputIn(_In):
    format: AudioFormat | None = None
    voice: str | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)


class AudioConfigIn(_In):
    input: AudioInputIn | None = None
    output: AudioOutputIn | None = None


Modalities = list[Literal["text", "audio"]]
MaxTokens = Annotated[int, Field(ge=1)] | Literal["inf"]
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # as chat completions take it


class FunctionToolIn(_In):
    """Realtime's flat tool shape (no nested "function" object, unlike chat completions)."""

    type: Literal["function"] = "function"
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})


class NamedToolChoiceIn(_In):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)


# "auto" | "none" | "required" | {"type": "function", "name": ...}; beta may give the name alone
ToolChoiceIn = NamedToolChoiceIn | str


class SessionIn(_In):
    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: str | None = None
    voice: str | None = None
    modalities: Modalities | None = None
    output_modalities: Modalities | None = None
    input_audio_format: AudioFormat | None = None
    output_audio_format: AudioFormat | None = None
    turn_detection: TurnDetectionIn | None = None  # null = push-to-talk: read model_fields_set
    input_audio_transcription: TranscriptionIn | None = None
    audio: AudioConfigIn | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    speed: float | None = Field(None, ge=0.25, le=1.5)
    max_response_output_tokens: MaxTokens | None = None
    max_output_tokens: MaxTokens | None = None
    max_thinking_tokens: int | None = Field(None, ge=0)  # extension: a thinking model's budget
    tools: list[FunctionToolIn] | None = Field(None, max_length=128)
    tool_choice: ToolChoiceIn | None = None


# -- conversation items -------------------------------------------------------------------------------


class ContentIn(_In):
    type: Literal["input_text", "input_audio", "input_image", "text", "output_text", "audio", "output_audio"]
    text: str | None = None
    audio: str | None = None  # base64 PCM16 24 kHz
    transcript: str | None = None
    image_url: str | None = None  # a data: URL


class ItemIn(_In):
    id: str | None = Field(None, max_length=64)
    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["user", "assistant", "system"] | None = None  # message
    content: list[ContentIn] | None = None  # message
    call_id: str | None = Field(None, min_length=1, max_length=256)  # function_call, function_call_output
    name: str | None = Field(None, pattern=FUNCTION_NAME)  # function_call
    arguments: str | None = None  # function_call: JSON text
    output: str | None = None  # function_call_output: free text

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ItemIn:
        if self.type == "message" and (self.role is None or self.content is None):
            raise ValueError("a message item needs role and content")
        if self.type != "message" and self.call_id is None:
            raise ValueError(f"a {self.type} item needs call_id")
        if self.type == "function_call" and self.name is None:
            raise ValueError("a function_call item needs name")
        if self.type == "function_call_output" and self.output is None:
            raise ValueError("a function_call_output item needs output")
        return self


class ResponseIn(_In):
    instructions: str | None = None
    modalities: Modalities | None = None
    output_modalities: Modalities | None = None
    voice: str | None = None
    audio: AudioConfigIn | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_output_tokens: MaxTokens | None = None
    max_response_output_tokens: MaxTokens | None = None
    max_thinking_tokens: int | None = Field(None, ge=0)  # extension: a thinking model's budget
    tools: list[FunctionToolIn] | None = Field(None, max_length=128)
    tool_choice: ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None


# -- client events ---------------------------------------------------------------------------------


class _Event(_In):
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: SessionIn


class InputAudioBufferAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ConversationItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: ItemIn
    previous_item_id: str | None = None


class ConversationItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseIn | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemTruncate
    | ConversationItemDelete
    | ConversationItemRetrieve
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]
CLIENT_EVENT_TYPES = frozenset(m.model_fields["type"].annotation.__args__[0] for m in ClientEvent.__origin__.__args__)
_client_event = TypeAdapter(ClientEvent)


def parse_client_event(data: Any):
    """A decoded JSON object → one of the event models above, or RealtimeError."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise RealtimeError("An event must be a JSON object.", "invalid_event")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RealtimeError("The event has no 'type' string.", "invalid_event", "type")
    if kind not in CLIENT_EVENT_TYPES:
        raise RealtimeError(f"Unknown event type {kind[:80]!r}.", "unknown_event_type", "type")
    try:
        return _client_event.validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:])  # [0] is the union tag
        raise RealtimeError(f"Invalid '{where}': {first['msg']}.", "invalid_value", where or None) from None


# -- server event names -------------------------------------------------------------------------------

_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


@dataclass(frozen=True)
class Dialect:
    beta: bool

    def event(self, ga_name: str) -> str:
        return _BETA_NAMES.get(ga_name, ga_name) if self.beta else ga_name

    def output_content(self, audio: bool) -> str:
        """The content type of an assistant item's part."""
        if self.beta:
            return "audio" if audio else "text"
        return "output_audio" if audio else "output_text"


def error_event(error: RealtimeError, client_event_id: str | None) -> dict:
    return {
        "type": "error",
        "event_id": new_id("event"),
        "error": {
            "type": "invalid_request_error",
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        },
    }
