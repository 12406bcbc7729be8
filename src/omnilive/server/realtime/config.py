"""A Realtime session's settings: what session.update changes, how they read on the wire, and
what one response takes from them.

    config = SessionConfig(voice=card.default_voice)
    config = updated_config(config, event.session)      # session.update; RealtimeError if refused
    session = session_wire(config, session_id, card, dialect)  # session.created / .updated
    plan = response_plan(config, request)                # a response's own overrides win

Both dialects' shapes of a setting land in the same field (beta's flat `turn_detection`, GA's
`audio.input.turn_detection`), so the rest of the session never asks which dialect it speaks.

Tools are checked when they are given, not when a response runs: duplicate names, a
tool_choice naming no given function, or parameters that are no usable JSON schema are an
`error` event for that session.update / response.create (a response would only fail later).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import llguidance

from omnilive.types import SPEECH_SAMPLE_RATE, ModelCard, Tool, ToolChoice
from omnilive.engine.tool_calls import output_format
from omnilive.server.realtime import events as ev
from omnilive.server.realtime.events import Dialect, RealtimeError
from omnilive.server.realtime.response import ResponsePlan

TURN_DETECTION_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                         "interrupt_response")


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True)
class SessionConfig:
    voice: str
    instructions: str = ""
    audio_out: bool = True
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)  # None = push-to-talk
    language: str | None = None
    transcription_prompt: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    max_thinking_tokens: int | None = None  # None: unlimited (thinking models only)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)  # auto, as OpenAI's default


def updated_config(config: SessionConfig, s: ev.SessionIn) -> SessionConfig:
    """`config` with what a session.update sets; fields it leaves out keep their values."""
    changes = {}
    audio_in = s.audio.input if s.audio and s.audio.input else None
    audio_out = s.audio.output if s.audio and s.audio.output else None
    for where, fmt in (("input_audio_format", s.input_audio_format), ("output_audio_format", s.output_audio_format),
                       ("audio.input.format", audio_in and audio_in.format),
                       ("audio.output.format", audio_out and audio_out.format)):
        _check_format(fmt, "session." + where)
    if s.instructions is not None:
        changes["instructions"] = s.instructions
    if voice := s.voice or (audio_out and audio_out.voice):
        changes["voice"] = voice
    if (modalities := s.output_modalities or s.modalities) is not None:
        changes["audio_out"] = "audio" in modalities
    detection, given = _turn_detection_update(s, audio_in)
    if given:
        changes["turn_detection"] = detection
    transcription = s.input_audio_transcription or (audio_in and audio_in.transcription)
    if transcription is not None:
        changes.update(language=transcription.language, transcription_prompt=transcription.prompt)
    if s.temperature is not None:
        changes["temperature"] = s.temperature
    if (limit := s.max_output_tokens or s.max_response_output_tokens) is not None:
        changes["max_output_tokens"] = None if limit == "inf" else limit
    if "max_thinking_tokens" in s.model_fields_set:
        changes["max_thinking_tokens"] = s.max_thinking_tokens
    if s.tools is not None:
        changes["tools"] = function_tools(s.tools, "session.tools")
    if s.tool_choice is not None:
        changes["tool_choice"] = tool_choice(s.tool_choice)
    updated = replace(config, **changes)
    check_tool_choice(updated.tools, updated.tool_choice, "session.tool_choice")
    return updated


def session_wire(config: SessionConfig, session_id: str, card: ModelCard, dialect: Dialect) -> dict:
    c, td = config, config.turn_detection
    detection = None if td is None else {"type": "server_vad", **{k: getattr(td, k) for k in TURN_DETECTION_FIELDS}}
    transcription = {"model": _asr_name(card), "language": c.language, "prompt": c.transcription_prompt}
    common = {"id": session_id, "object": "realtime.session", "instructions": c.instructions,
              "tools": tools_wire(c.tools), "tool_choice": tool_choice_wire(c.tool_choice, dialect),
              "max_thinking_tokens": c.max_thinking_tokens}  # the last: an extension
    limit = c.max_output_tokens or "inf"
    if dialect.beta:  # the beta schema lists only OpenAI's model names, so ours is left out
        return {**common, "modalities": ["text", "audio"] if c.audio_out else ["text"], "voice": c.voice,
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": transcription, "turn_detection": detection,
                "temperature": c.temperature or 0.8, "max_response_output_tokens": limit}
    pcm = {"type": "audio/pcm", "rate": SPEECH_SAMPLE_RATE}
    return {**common, "type": "realtime", "model": card.id, "output_modalities": ["audio"] if c.audio_out else ["text"],
            "max_output_tokens": limit,
            "audio": {"input": {"format": pcm, "transcription": transcription, "turn_detection": detection},
                      "output": {"format": pcm, "voice": c.voice, "speed": 1.0}}}


def response_plan(config: SessionConfig, request: ev.ResponseIn) -> ResponsePlan:
    """What one response runs with: the session's settings, less what response.create overrides."""
    c = config
    modalities = request.output_modalities or request.modalities
    out = request.audio.output if request.audio and request.audio.output else None
    if out is not None:
        _check_format(out.format, "response.audio.output.format")
    limit = request.max_output_tokens or request.max_response_output_tokens
    tools = c.tools if request.tools is None else function_tools(request.tools, "response.tools")
    choice = c.tool_choice if request.tool_choice is None else tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None:
        choice = replace(choice, parallel=request.parallel_tool_calls)
    check_tool_choice(tools, choice, "response.tool_choice")
    return ResponsePlan(
        audio=c.audio_out if modalities is None else "audio" in modalities,
        voice=request.voice or (out and out.voice) or c.voice,
        instructions=c.instructions if request.instructions is None else request.instructions,
        temperature=c.temperature if request.temperature is None else request.temperature,
        max_output_tokens=c.max_output_tokens if limit is None else (None if limit == "inf" else limit),
        max_thinking_tokens=(request.max_thinking_tokens if "max_thinking_tokens" in request.model_fields_set
                             else c.max_thinking_tokens),
        tools=tools,
        tool_choice=choice,
    )


# -- tools ----------------------------------------------------------------------------------------


def function_tools(given: list[ev.FunctionToolIn], param: str) -> tuple[Tool, ...]:
    """Realtime's flat function tools → the engine's, each schema checked by the engine's own
    grammar compiler (what a response would otherwise fail on)."""
    tools, names = [], set()
    for i, t in enumerate(given):
        if t.name in names:
            raise RealtimeError(f"{param} has two functions named {t.name!r}; names must be unique.",
                                "invalid_value", f"{param}[{i}].name")
        names.add(t.name)
        tool = Tool(t.name, t.description, json.dumps(t.parameters))
        grammar = output_format((tool,), ToolChoice("required"), None).grammar
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
        if failed:
            reason = messages[0].split("\n")[0].split(": ", 1)[-1] if messages else "it does not compile"
            raise RealtimeError(f"{param}[{i}].parameters ({t.name!r}) is not a usable JSON schema: {reason}",
                                "invalid_value", f"{param}[{i}].parameters")
        tools.append(tool)
    return tuple(tools)


def tool_choice(given: ev.ToolChoiceIn) -> ToolChoice:
    if isinstance(given, ev.NamedToolChoiceIn):
        return ToolChoice("function", given.name)
    if given in ("auto", "none", "required"):
        return ToolChoice(given)
    return ToolChoice("function", given)  # beta's string form: a function's name


def check_tool_choice(tools: tuple[Tool, ...], choice: ToolChoice, param: str) -> None:
    names = [t.name for t in tools]
    if choice.mode == "function" and choice.function not in names:
        raise RealtimeError(f"tool_choice names function {choice.function!r}, which is not in tools "
                            f"({', '.join(names) or 'none given'}).", "invalid_value", param)
    if choice.mode == "required" and not names:
        raise RealtimeError("tool_choice 'required' needs at least one tool.", "invalid_value", param)


def tools_wire(tools: tuple[Tool, ...]) -> list[dict]:
    return [{"type": "function", "name": t.name, "description": t.description or "",
             "parameters": json.loads(t.parameters)} for t in tools]


def tool_choice_wire(choice: ToolChoice, dialect: Dialect) -> str | dict:
    if choice.mode != "function":
        return choice.mode
    return choice.function if dialect.beta else {"type": "function", "name": choice.function}


def _check_format(fmt, param: str) -> None:
    """Only PCM16 at 24 kHz ("pcm16", or GA's {"type": "audio/pcm", "rate": 24000})."""
    if fmt is None or fmt == "pcm16":
        return
    if isinstance(fmt, ev.AudioFormatIn) and fmt.type == "audio/pcm" and fmt.rate in (None, SPEECH_SAMPLE_RATE):
        return
    raise RealtimeError("Only PCM16 audio at 24 kHz is supported ('pcm16' or {'type': 'audio/pcm', 'rate': 24000}).",
                        "unsupported_audio_format", param)


def _turn_detection_update(s: ev.SessionIn, audio_in: ev.AudioInputIn | None) -> tuple[TurnDetection | None, bool]:
    """(new turn detection, whether the update sets it): an explicit null turns VAD off."""
    if "turn_detection" in s.model_fields_set:
        given = s.turn_detection
    elif audio_in is not None and "turn_detection" in audio_in.model_fields_set:
        given = audio_in.turn_detection
    else:
        return None, False
    if given is None:
        return None, True
    values = {k: getattr(given, k) for k in TURN_DETECTION_FIELDS}
    return replace(TurnDetection(), **{k: v for k, v in values.items() if v is not None}), True


def _asr_name(card: ModelCard) -> str:
    return next((p.get("name", "asr") for p in card.parts if p.get("role") == "asr"), card.id)
