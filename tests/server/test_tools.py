"""Function calling and structured outputs through the official OpenAI client, against the
real default engine: what the constrained decoder guarantees holds across sampled replies."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                      "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"], "additionalProperties": False}}},
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
ASK = [{"role": "user", "content": "Weather in Tokyo please."}]
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "country": {"type": "string"},
        "population_millions": {"type": "number"},
        "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "country", "population_millions", "landmarks"],
    "additionalProperties": False,
}


def ask(client, model_id, **kwargs):
    return client.chat.completions.create(model=model_id, messages=kwargs.pop("messages", ASK), tools=TOOLS,
                                          max_tokens=kwargs.pop("max_tokens", 80), **kwargs)


def assert_valid_calls(message):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_always_calls_it_with_valid_arguments(client, model_id):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(3):
        choice = ask(client, model_id, tool_choice=named, temperature=1.2, seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert_valid_calls(choice.message)
        assert {call.function.name for call in choice.message.tool_calls} == {"get_weather"}


def test_required_tool_choice_calls_some_tool(client, model_id):
    for seed in range(2):
        choice = ask(client, model_id, tool_choice="required", parallel_tool_calls=False, temperature=1.2,
                     seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert_valid_calls(choice.message)


def test_auto_calls_on_an_obvious_request(client, model_id):
    choice = ask(client, model_id, temperature=0).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message)
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "tokyo" in call.function.arguments.lower()


def test_no_tool_call_when_choice_is_none(client, model_id):
    choice = ask(client, model_id, tool_choice="none", temperature=0).choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_the_tool_result_reaches_the_answer(client, model_id):
    first = ask(client, model_id, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                temperature=0).choices[0].message
    call = first.tool_calls[0]
    history = ASK + [first.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id,
                      "content": json.dumps({"temperature_celsius": 31, "sky": "sunny"})}]
    # the small embedded model would call again under "auto": "none" asks it for words
    answer = ask(client, model_id, messages=history, tool_choice="none", temperature=0).choices[0].message
    assert answer.tool_calls is None and "31" in answer.content


def test_streamed_calls_join_to_the_whole_reply(client, model_id):
    kwargs = dict(tool_choice="required", temperature=0, seed=3)
    whole = ask(client, model_id, **kwargs).choices[0]
    chunks = list(ask(client, model_id, stream=True, **kwargs))
    pieces = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    first = pieces[0]
    assert first.id and first.type == "function" and first.function.name and first.function.arguments == ""
    assert all(p.id is None and p.function.name is None for p in pieces[1:] if p.index == first.index)
    joined = {}
    for piece in pieces:
        entry = joined.setdefault(piece.index, {"id": piece.id, "name": piece.function.name, "arguments": ""})
        entry["arguments"] += piece.function.arguments or ""
    assert [(c["name"], c["arguments"]) for c in joined.values()] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_strict_json_schema_replies_validate(client, model_id):
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    for seed in range(3):
        choice = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
            response_format=response_format, temperature=1.0, seed=seed, max_tokens=150).choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), CITY)


def test_json_object_reply_parses(client, model_id):
    choice = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=120).choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
    ({"tool_choice": "required", "tools": None}, None),
    ({"tools": [TOOLS[0], TOOLS[0]]}, None),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
      "tools": None}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
      "tool_choice": "required"}, "tools"),
    ({"messages": [{"role": "tool", "content": "31"}]}, None),
])
def test_bad_tool_requests_are_400s(client, model_id, extra, param):
    kwargs = {"model": model_id, "messages": ASK, "tools": TOOLS, "max_tokens": 5, **extra}
    if kwargs["tools"] is None:
        del kwargs["tools"]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**kwargs)
    if param is not None:
        assert error.value.body["param"] == param
    assert client.chat.completions.create(model=model_id, messages=ASK, max_tokens=2).choices  # still serving


def test_unknown_arguments_are_refused_not_dropped(client, model_id):
    for extra in ({"frobnicate": 1}, {"prediction": {"type": "content", "content": "x"}}, {"store": True},
                  {"functions": [{"name": "f"}]}):
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model=model_id, messages=ASK, max_tokens=2, extra_body=extra)
        assert error.value.body["param"] == next(iter(extra))


def test_penalties_and_logit_bias_are_honoured(client, model_id):
    def reply(**kwargs):
        return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "List the numbers from 1 to 20, separated by commas."}],
                                              max_tokens=30, temperature=0, logprobs=True, **kwargs).choices[0]

    plain = reply()
    assert reply(frequency_penalty=2.0).message.content != plain.message.content
    assert reply(presence_penalty=2.0).message.content != plain.message.content
    # Qwen's ids 0..255 are its single-byte tokens ("1", ",", " "...): banned, none is written
    assert any(len(t.bytes) == 1 for t in plain.logprobs.content)
    banned = reply(logit_bias={str(i): -100 for i in range(256)})
    assert banned.logprobs.content and all(len(t.bytes) > 1 for t in banned.logprobs.content)
