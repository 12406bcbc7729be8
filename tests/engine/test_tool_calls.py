"""Tool calls parsed out of a streamed reply (engine/tool_calls.py): stream == whole."""

from __future__ import annotations

import json
import random

import pytest

from omnilive.engine.tool_calls import ToolCallParser, output_format
from omnilive.types import ResponseFormat, Tool, ToolChoice

WEATHER = '{"city": "Tokyo", "unit": "celsius", "nested": {"days": [1, 2]}}'
TWO_CALLS = (
    "Let me look. <tool_call>\n"
    f'{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>\n<tool_call>\n'
    '{"name": "get_time", "arguments": {}}\n</tool_call>'
)


def parse(reply: str, rng: random.Random | None = None) -> tuple[str, list[dict]]:
    """Feed `reply` in random pieces (one piece without rng); the text and the joined calls."""
    parser, text, pieces, at = ToolCallParser(), "", [], 0
    while at < len(reply):
        size = rng.randint(1, 9) if rng else len(reply)
        got, deltas = parser.feed(reply[at: at + size])
        text, pieces, at = text + got, pieces + deltas, at + size
    got, deltas = parser.finish()
    calls: dict[int, dict] = {}
    for piece in pieces + deltas:
        if piece.id is not None:
            assert piece.index not in calls, "a call's id and name come once, first"
            calls[piece.index] = {"id": piece.id, "name": piece.name, "arguments": ""}
        calls[piece.index]["arguments"] += piece.arguments
    assert list(calls) == list(range(len(calls)))
    return text + got, list(calls.values())


@pytest.mark.parametrize("reply, text, calls", [
    (TWO_CALLS, "Let me look. ", [("get_weather", WEATHER), ("get_time", "{}")]),
    ("\n\n<tool_call>\n" f'{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>', "",
     [("get_weather", WEATHER)]),
    (f'```json\n{{"name": "get_weather", "arguments": {WEATHER}}}\n```', "", [("get_weather", WEATHER)]),
    (f'  {{"name": "get_weather", "arguments": {WEATHER}}}', "", [("get_weather", WEATHER)]),
    ("```python\nprint({1: 2})\n```", "```python\nprint({1: 2})\n```", []),
    ("No call here: a < b and {x} are just text.", "No call here: a < b and {x} are just text.", []),
    # arguments before the name: the whole body is parsed at the end
    ('<tool_call>\n{"arguments": {"a": 1}, "name": "f"}\n</tool_call>', "", [("f", '{"a": 1}')]),
    # a reply cut off inside its call (max_tokens): the call ends as far as it got
    ('<tool_call>\n{"name": "f", "arguments": {"a": "unfinis', "", [("f", '{"a": "unfinis')]),
    # not JSON at all: no name, its text as arguments (never an exception)
    ("<tool_call>\nnot json\n</tool_call>", "", [("", "not json")]),
])
def test_stream_equals_whole(reply, text, calls):
    whole = parse(reply)
    assert (whole[0], [(c["name"], c["arguments"]) for c in whole[1]]) == (text, calls)
    rng = random.Random(0)
    for _ in range(50):
        got_text, got_calls = parse(reply, rng)
        assert got_text == whole[0]
        assert [(c["name"], c["arguments"]) for c in got_calls] == [(c["name"], c["arguments"]) for c in whole[1]]


def test_arguments_stream_before_the_call_ends():
    parser = ToolCallParser()
    _, deltas = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tok')
    assert deltas[0].name == "get_weather" and deltas[0].id.startswith("call_")
    assert "".join(d.arguments for d in deltas) == '{"city": "Tok'


def test_every_call_gets_its_own_id():
    _, calls = parse(TWO_CALLS)
    assert len({c["id"] for c in calls}) == 2


SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'


def test_output_formats():
    tools = (Tool("get_weather", "Weather", SCHEMA), Tool("get_time"))
    words = output_format(tools, ToolChoice("none"), None)
    assert not words.tool_calls and "start: WORDS" in words.grammar
    assert output_format((), ToolChoice("none"), None) is None
    named = output_format(tools, ToolChoice("function", "get_time"), None)
    assert named.tool_calls and 'get_time' in named.grammar and "get_weather" not in named.grammar
    assert output_format(tools, ToolChoice("auto"), None).tool_calls
    json_only = output_format((), ToolChoice("none"), ResponseFormat("json_schema", SCHEMA))
    enforced = json.loads(json_only.grammar.split("%json ", 1)[1].split("\n", 1)[0])
    assert not json_only.tool_calls and "whitespace_pattern" in enforced.pop("x-guidance")
    assert enforced == json.loads(SCHEMA)
    assert json_only.param == "response_format" and named.param == "tools"
