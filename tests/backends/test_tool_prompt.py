"""Tools in the prompt: what our prompt builders render equals transformers' apply_chat_template
with the same tools and messages; a template that knows no tools gets the same text."""

from __future__ import annotations

import json

import pytest

from omnilive.backends.tool_prompt import template_entry, with_tools
from omnilive.model.tokenizer import Tokenizer, TokenizerInfo
from omnilive.types import Message, Tool, ToolCall

from tests.engine.test_llm_engine import TOKENIZER

transformers = pytest.importorskip("transformers")

# Qwen2.5-Instruct's tool-aware chat template
QWEN25_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# the same conversation format without tools (ChatML, Qwen's default system prompt)
PLAIN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = (Tool("get_weather", "The weather in a city", json.dumps(WEATHER)), Tool("get_time", None, '{"type": "object"}'))
CALLS = (ToolCall("call_1", "get_weather", '{"city": "Tokyo"}'), ToolCall("call_2", "get_time", "{}"))
CONVERSATION = (
    Message("system", ("You are terse.",)),
    Message("user", ("Weather and time in Tokyo?",)),
    Message("assistant", ("Checking.",), tool_calls=CALLS),
    Message("tool", ('{"celsius": 31}',), tool_call_id="call_1"),
    Message("tool", ('{"time": "09:00"}',), tool_call_id="call_2"),
    Message("assistant", ("31 degrees at nine.",)),
    Message("user", ("And Paris?",)),
    Message("assistant", (), tool_calls=(ToolCall("call_3", "get_weather", '{"city": "Paris"}'),)),
    Message("tool", ('{"celsius": 12}',), tool_call_id="call_3"),
)


def ours(template: str, messages=CONVERSATION, tools=TOOLS) -> str:
    tokenizer = Tokenizer(TOKENIZER.backend, TokenizerInfo(chat_template=template))
    messages, variables = with_tools(messages, tools, template)
    return tokenizer.render_chat([template_entry(m, m.text) for m in messages], **variables)


def openai_shaped(messages=CONVERSATION) -> list[dict]:
    """The conversation as a client sends it (and as transformers takes it)."""
    shaped = []
    for m in messages:
        entry = {"role": m.role, "content": m.text}
        if m.tool_calls:
            entry["tool_calls"] = [{"id": c.id, "type": "function",
                                    "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                                   for c in m.tool_calls]
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        shaped.append(entry)
    return shaped


def reference(template: str, tools=TOOLS) -> str:
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=TOKENIZER.backend)
    signatures = [{"type": "function", "function": {"name": t.name,
                                                    **({"description": t.description} if t.description else {}),
                                                    "parameters": json.loads(t.parameters)}} for t in tools]
    return tokenizer.apply_chat_template(openai_shaped(), tools=signatures or None, chat_template=template,
                                         tokenize=False, add_generation_prompt=True)


def test_a_tool_aware_template_renders_as_in_transformers():
    assert ours(QWEN25_TOOLS_TEMPLATE) == reference(QWEN25_TOOLS_TEMPLATE)


def test_a_template_without_tools_gets_the_same_conversation_written_out():
    assert ours(PLAIN_TEMPLATE) == reference(QWEN25_TOOLS_TEMPLATE)


def test_no_tools_offered_still_renders_the_calls_in_the_history():
    assert ours(QWEN25_TOOLS_TEMPLATE, tools=()) == reference(QWEN25_TOOLS_TEMPLATE, tools=())
    assert ours(PLAIN_TEMPLATE, tools=()) == reference(QWEN25_TOOLS_TEMPLATE, tools=())
