"""Typed messages between the server and an engine.

The server turns HTTP requests into an `EngineRequest` (media already decoded by
`omnilive.media`), iterates `engine.generate(request)` and turns each output back into
HTTP. Closing that async iterator early (client gone) aborts the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, Protocol, Sequence, Union

import numpy as np
from PIL import Image

Role = Literal["system", "user", "assistant", "tool"]
Modality = Literal["text", "audio"]

ASR_SAMPLE_RATE = 16_000  # every decoded input audio is 16 kHz mono float32 in [-1, 1]
SPEECH_SAMPLE_RATE = 24_000  # every synthesised output audio is 24 kHz mono float32


@dataclass(frozen=True)
class ImageInput:
    image: Image.Image  # RGB


@dataclass(frozen=True)
class AudioInput:
    samples: np.ndarray  # (n,) float32, 16 kHz mono

    @property
    def duration_s(self) -> float:
        return len(self.samples) / ASR_SAMPLE_RATE


@dataclass(frozen=True)
class VideoInput:
    frames: tuple[Image.Image, ...]  # RGB frames sampled at `fps`
    fps: float
    audio: AudioInput | None  # the video's own audio track, if it has one

    @property
    def duration_s(self) -> float:
        return len(self.frames) / self.fps if self.fps else 0.0


ContentPart = Union[str, ImageInput, AudioInput, VideoInput]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: `arguments` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    role: Role
    content: tuple[ContentPart, ...]
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call it answers

    @property
    def text(self) -> str:
        return "".join(p for p in self.content if isinstance(p, str))


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # multiplicative, over prompt and output (HF's)
    presence_penalty: float = 0.0  # additive, once per token seen in the output (OpenAI's)
    frequency_penalty: float = 0.0  # additive, per occurrence in the output (OpenAI's)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    max_tokens: int | None = None  # None = up to the context limit
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is its JSON schema as JSON text."""

    name: str
    description: str | None = None
    parameters: str = '{"type": "object", "properties": {}}'
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """auto: the model decides; none: no calls; required: at least one call; function: that one."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    function: str | None = None  # the function's name, for mode "function"
    parallel: bool = True  # may call several functions in one reply


@dataclass(frozen=True)
class ResponseFormat:
    """The reply is JSON (json_object), or JSON valid against `schema` (JSON text)."""

    type: Literal["json_object", "json_schema"]
    schema: str | None = None


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    modalities: tuple[Modality, ...] = ("text",)
    voice: str | None = None  # None = the engine's default voice
    max_thinking_tokens: int | None = None  # None = unlimited (thinking models only)
    min_thinking_tokens: int = 0  # think at least this long: an earlier </think> becomes "Wait"
    chat_template_kwargs: tuple[tuple[str, str | int | float | bool | None], ...] = ()  # e.g. enable_thinking
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    response_format: ResponseFormat | None = None  # None: free text

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        """The tools the prompt shows: none when the model must not call (as vLLM does)."""
        return () if self.tool_choice.mode == "none" else self.tools


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()  # (token, logprob, bytes)


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the `index`-th tool call of the reply: the first carries its id and name,
    the others pieces of its arguments' JSON text, as OpenAI streams them."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class AudioChunk:
    samples: np.ndarray  # (n,) float32, 24 kHz mono
    transcript: str  # the text this chunk speaks


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    audio_prompt_tokens: int = 0
    image_prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, found in the KV cache (not computed)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


FinishReason = Literal["stop", "length", "abort", "tool_calls"]


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage


EngineOutput = Union[TextDelta, ReasoningDelta, ToolCallDelta, AudioChunk, Finished]


@dataclass(frozen=True)
class ModelCard:
    id: str  # e.g. "omnilive-small"
    owned_by: str
    parts: tuple[dict, ...]  # [{"role": "asr", "name": ..., "source": ...}, ...]
    context_length: int
    voices: tuple[str, ...]
    default_voice: str
    input_modalities: tuple[str, ...] = ("text", "image", "audio", "video")
    output_modalities: tuple[str, ...] = ("text", "audio")


@dataclass(frozen=True)
class TranscriptSegment:
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    duration_s: float
    segments: tuple[TranscriptSegment, ...] = ()


class EngineError(Exception):
    """A request the engine cannot serve (prompt too long, bad voice...): the server maps it to 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class Backend(Protocol):
    """What the server needs from any back-end (embedded cascade or native checkpoint)."""

    @property
    def card(self) -> ModelCard: ...

    async def start(self) -> None: ...  # load and warm up

    async def stop(self) -> None: ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream outputs; the last one is `Finished`. Closing the iterator aborts the request."""
        ...

    def count_tokens(self, messages: Sequence[Message]) -> int: ...

    async def transcribe(
        self, audio: AudioInput, language: str | None = None, prompt: str | None = None
    ) -> Transcript: ...

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> AsyncIterator[np.ndarray]:
        """Speech for `text`, sentence by sentence, as 24 kHz float32 chunks."""
        ...
