"""Constrained decoding in the engine, on a tiny random model: whatever its random logits
prefer, a grammar-bound reply is valid, and a grammar costs other requests nothing."""

from __future__ import annotations

import json

import jsonschema
import pytest

from omnilive.engine.tool_calls import output_format
from omnilive.types import EngineError, ResponseFormat, SamplingParams, Tool, ToolChoice

from tests.engine.test_llm_engine import make_engine, prompt, run_to_end, tokens_of

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit", "days", "hourly"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "JST"]}},
        "required": ["zone"], "additionalProperties": False}
TOOLS = (Tool("get_weather", "Weather", json.dumps(WEATHER)), Tool("get_time", "Time", json.dumps(TIME)))
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def sampled(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=200)


def reply(engine, output, sampling, request_id="r", text="Weather in Tokyo?"):
    engine.add_request(request_id, prompt(text), sampling, output=output)
    outputs = run_to_end(engine)[request_id]
    calls: dict[int, dict] = {}
    for piece in (call for o in outputs for call in o.tool_calls):
        if piece.id is not None:
            calls[piece.index] = {"name": piece.name, "arguments": ""}
        calls[piece.index]["arguments"] += piece.arguments
    return outputs, "".join(o.text for o in outputs), list(calls.values())


@pytest.mark.parametrize("choice", [ToolChoice("function", "get_weather", parallel=False),
                                    ToolChoice("required", parallel=False), ToolChoice("required")])
def test_forced_calls_always_validate(choice):
    engine = make_engine()
    for seed in range(8):
        outputs, text, calls = reply(engine, output_format(TOOLS, choice, None), sampled(seed), f"r{seed}")
        assert text == "" and calls
        if choice.parallel and outputs[-1].finish_reason == "length":
            calls = calls[:-1]  # a random model may call on and on: the last call was cut off
        else:
            assert outputs[-1].finish_reason == "tool_calls" and len(calls) == 1
        for call in calls:
            assert choice.mode != "function" or call["name"] == "get_weather"
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_auto_gives_words_or_valid_calls():
    engine = make_engine()
    kinds = set()
    for seed in range(10):
        outputs, text, calls = reply(engine, output_format(TOOLS, ToolChoice("auto"), None), sampled(seed), f"r{seed}")
        if calls:
            kinds.add("calls")
            assert outputs[-1].finish_reason == "tool_calls"
            for call in calls:
                jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
        else:
            kinds.add("words")
            assert not text.lstrip().startswith(("{", "`"))
    assert kinds  # a random model may pick either; whichever it picks is well formed


def test_json_schema_reply_always_validates():
    engine = make_engine()
    output = output_format((), ToolChoice("none"), ResponseFormat("json_schema", json.dumps(WEATHER)))
    for seed in range(8):
        outputs, text, calls = reply(engine, output, sampled(seed), f"r{seed}")
        assert outputs[-1].finish_reason == "stop" and not calls
        jsonschema.validate(json.loads(text), WEATHER)


def test_json_object_reply_is_an_object():
    engine = make_engine()
    output = output_format((), ToolChoice("none"), ResponseFormat("json_object"))
    for seed in range(4):
        outputs, text, _ = reply(engine, output, SamplingParams(temperature=1.0, seed=seed, max_tokens=200), f"r{seed}")
        if outputs[-1].finish_reason == "stop":  # a random model may write a long object
            assert isinstance(json.loads(text), dict)


def test_grammar_and_free_requests_batched_equal_alone():
    forced = output_format(TOOLS, ToolChoice("required"), None)
    schema = output_format((), ToolChoice("none"), ResponseFormat("json_schema", json.dumps(WEATHER)))
    requests = [("tools", prompt("Weather?"), sampled(1), None, (), None, 0, forced),
                ("free", prompt("Hello there"), sampled(2)),
                ("json", prompt("JSON please"), sampled(3), None, (), None, 0, schema)]
    alone = {}
    for args in requests:
        engine = make_engine()
        alone[args[0]] = tokens_of(run_to_end(engine, {0: [args]})[args[0]])
    batched = run_to_end(make_engine(), {0: requests[:2], 2: requests[2:]})
    assert {name: tokens_of(outputs) for name, outputs in batched.items()} == alone


def test_reasoning_is_free_and_the_answer_follows_the_grammar():
    """A thinking reply: the think block is not constrained; the answer after it is."""
    engine = make_engine()
    output = output_format((), ToolChoice("none"), ResponseFormat("json_schema", json.dumps(TIME)))
    ids = prompt("What time is it?") + engine.tokenizer.encode("<think>\n")
    engine.add_request("t", ids, sampled(5), thinking_budget=6, output=output)
    outputs = run_to_end(engine)["t"]
    assert "".join(o.reasoning for o in outputs) and outputs[-1].reasoning_tokens > 6
    jsonschema.validate(json.loads("".join(o.text for o in outputs)), TIME)


def test_an_invalid_schema_is_the_callers_error():
    engine = make_engine()
    bad = output_format((), ToolChoice("none"), ResponseFormat("json_schema", '{"type": "no-such-type"}'))
    with pytest.raises(EngineError) as error:
        engine.add_request("bad", prompt("x"), sampled(0), output=bad)
    assert error.value.param == "response_format"
    assert not engine.has_work()
