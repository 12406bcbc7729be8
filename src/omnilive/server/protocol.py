"""The OpenAI wire format of what clients send: pydantic request models for the /v1 routes
(what the server sends back is in responses.py).

A request's top level refuses arguments it does not know, as OpenAI's API does: a field the
server cannot honour is a 400, never dropped. Nested objects (content parts, tools) ignore
unknown keys, so a newer client's extra detail does not break a request.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- request: messages and their content parts ----------------------------------------------

AudioInputFormat = Literal["wav", "mp3", "flac", "ogg", "opus", "webm", "m4a", "aac", "pcm16", "g711_ulaw", "g711_alaw"]
AudioOutputFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"]


class ImageURL(_Lenient):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class MediaURL(_Lenient):
    url: str  # data: URL, a `file-...` id from /v1/files, or http(s) when the server allows it


class InputAudio(_Lenient):
    data: str  # base64
    format: AudioInputFormat


class FileRef(_Lenient):
    file_id: str | None = None
    file_data: str | None = None  # a data: URL or bare base64, as OpenAI's `file` part allows
    filename: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FileRef:
        if (self.file_id is None) == (self.file_data is None):
            raise ValueError("give exactly one of file_id or file_data")
        return self


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_url(cls, value):  # some clients send "image_url": "data:..."
        return {"url": value} if isinstance(value, str) else value


class InputAudioPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURLPart(_Lenient):  # vLLM's extension
    type: Literal["audio_url"]
    audio_url: MediaURL


class VideoURLPart(_Lenient):  # vLLM's extension
    type: Literal["video_url"]
    video_url: MediaURL


class FilePart(_Lenient):
    type: Literal["file"]
    file: FileRef


ContentPart = Annotated[
    Union[TextPart, ImagePart, InputAudioPart, AudioURLPart, VideoURLPart, FilePart],
    Field(discriminator="type"),
]


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCallParam(_Lenient):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCallParam(_Lenient):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallParam


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = Field(None, max_length=128)  # an assistant turn's calls
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)  # a tool turn: the call it answers

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.tool_call_id is None) == (self.role == "tool"):
            raise ValueError("a tool message needs tool_call_id (and only a tool message has one)")
        return self


class FunctionDefinition(_Lenient):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolParam(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Lenient):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormatParam(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatParam:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type 'json_schema', and only then")
        return self


class AudioOutputParams(_Lenient):
    voice: str | None = None  # None = the model's default voice
    format: AudioOutputFormat = "wav"  # non-streaming only; streamed audio is always pcm16


class StreamOptions(_Lenient):
    include_usage: bool = False


# OpenAI's reasoning_effort as a thinking budget, for thinking models (None = unlimited)
THINKING_BUDGET_BY_EFFORT = {"minimal": 0, "low": 512, "medium": 2048, "high": None}


class ThinkingParams(_Lenient):
    """Anthropic's `thinking`: enabled with a budget of thinking tokens, or disabled (budget 0)."""

    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = Field(None, ge=0)


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions.

    Every field is honoured or refused: an argument this server does not know is a 400, as on
    OpenAI's API, never silently dropped. `user`, `safety_identifier` and `prompt_cache_key`
    only identify the caller. Only n=1 is supported.
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutputParams | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # extension; 0 or -1 = off
    repetition_penalty: float | None = Field(None, gt=0, le=2)  # extension
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logit_bias: dict[str, float] | None = Field(None, max_length=300)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    n: int | None = 1
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    max_thinking_tokens: int | None = Field(None, ge=0)  # extension
    thinking_token_budget: int | None = Field(None, ge=0)  # extension (vLLM's name)
    min_thinking_tokens: int | None = Field(None, ge=0)  # extension: think at least this long
    thinking: ThinkingParams | None = None  # extension (Anthropic's shape)
    # extension (vLLM's): extra variables of the model's chat template, e.g. {"enable_thinking": false}
    chat_template_kwargs: dict[str, str | int | float | bool | None] | None = Field(None, max_length=16)
    tools: list[ToolParam] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatParam | None = None
    store: Literal[False] | None = None  # this server keeps no completions for later retrieval
    service_tier: Literal["auto", "default"] | None = None  # one tier here
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # prefix caching is automatic

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit() or not -100 <= bias <= 100:
                raise ValueError("logit_bias maps token ids (digits) to biases in [-100, 100]")
        return value

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("this server supports only n=1")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop takes up to 16 non-empty strings")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools: two functions have the same name")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names function {self.tool_choice.function.name!r}, which is not in tools")
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        return self

    @property
    def wants_audio(self) -> bool:
        return "audio" in (self.modalities or ())

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def thinking_budget(self) -> int | None:
        for budget in (self.max_thinking_tokens, self.thinking_token_budget):
            if budget is not None:
                return budget
        if self.thinking is not None:
            return 0 if self.thinking.type == "disabled" else self.thinking.budget_tokens
        return THINKING_BUDGET_BY_EFFORT[self.reasoning_effort] if self.reasoning_effort else None


# -- audio -----------------------------------------------------------------------------------


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech. An argument this server cannot honour (`instructions`: the
    packaged voices take no style prompt) is a 400, not dropped."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str = Field(min_length=1)
    voice: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio"] = "audio"  # the audio itself, streamed as it is made
