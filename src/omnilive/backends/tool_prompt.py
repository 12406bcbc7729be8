"""Tools in the prompt: the functions a model may call, its earlier calls and their results.

A chat template that knows tools (Qwen2.5 and Qwen3 instruct models) gets them as
transformers passes them: a `tools` variable, `tool_calls` on assistant messages and `tool`
messages with the results. A template that does not (Qwen2.5-Omni, Qwen2.5-VL, Qwen2-VL) gets
the same conversation written out the way the tool-aware Qwen templates write it: the
function signatures in the system prompt, calls as <tool_call> text, results as
<tool_response> user turns — the Hermes format engine/tool_calls.py parses and enforces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from omnilive.engine.tool_calls import CALL_END, CALL_START
from omnilive.types import Message, Tool, ToolCall

TOOLS_SYSTEM_TEXT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{signatures}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>"
)


def knows_tools(template: str | None) -> bool:
    """Whether a chat template renders tools itself."""
    return template is not None and "tools" in template and "tool_call" in template


def tool_signatures(tools: Sequence[Tool]) -> list[dict]:
    """The `tools` template variable, in OpenAI's (and transformers') shape."""
    signatures = []
    for tool in tools:
        function = {"name": tool.name, **({"description": tool.description} if tool.description else {}),
                    "parameters": json.loads(tool.parameters)}
        signatures.append({"type": "function", "function": function})
    return signatures


def template_entry(message: Message, content) -> dict:
    """One message as a tool-aware template reads it; `content` as the builder renders it."""
    entry = {"role": message.role, "content": content}
    if message.tool_calls:
        entry["tool_calls"] = [{"type": "function", "id": call.id,
                                "function": {"name": call.name, "arguments": _arguments(call)}}
                               for call in message.tool_calls]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def with_tools(messages: Sequence[Message], tools: Sequence[Tool], template: str | None
               ) -> tuple[tuple[Message, ...], dict]:
    """(messages, extra template variables) for `template`: unchanged with a `tools` variable
    when it knows tools, else written out as text."""
    if knows_tools(template):
        return tuple(messages), ({"tools": tool_signatures(tools)} if tools else {})
    written = [_as_text(message) for message in messages]
    if tools:
        signatures = "\n".join(json.dumps(s, ensure_ascii=False) for s in tool_signatures(tools))
        text = TOOLS_SYSTEM_TEXT.format(signatures=signatures)
        if written and written[0].role == "system":
            written[0] = Message("system", (*written[0].content, f"\n\n{text}"))
        else:
            written.insert(0, Message("system", (text,)))
    return _merged_responses(written), {}


def _as_text(message: Message) -> Message:
    if message.role == "tool":
        return Message("user", (f"<tool_response>\n{message.text}\n</tool_response>",))
    if not message.tool_calls:
        return message
    calls = "\n".join(f"{CALL_START}\n{json.dumps({'name': c.name, 'arguments': _arguments(c)}, ensure_ascii=False)}"
                      f"\n{CALL_END}" for c in message.tool_calls)
    return Message("assistant", (*message.content, ("\n" if message.text else "") + calls))


def _merged_responses(messages: list[Message]) -> tuple[Message, ...]:
    """Consecutive tool results make one user turn, as the Qwen templates write them."""
    merged: list[Message] = []
    for message in messages:
        both = merged and merged[-1].role == "user" and message.role == "user"
        if both and merged[-1].text.startswith("<tool_response>") and message.text.startswith("<tool_response>"):
            merged[-1] = Message("user", (f"{merged[-1].text}\n{message.text}",))
        else:
            merged.append(message)
    return tuple(merged)


def _arguments(call: ToolCall):
    """Arguments as the templates expect them: an object (they write it with tojson)."""
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments
