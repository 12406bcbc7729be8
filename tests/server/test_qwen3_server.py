"""`omnilive serve --model DIR` on tiny random Qwen3 and Qwen3-MoE thinking checkpoints, through the
OpenAI client.

A real server subprocess. The model thinks until its budget runs out (its `</think>` and stop
rows are zeroed, see tests/model/qwen3_tiny.py), so every budget is reached and checked: the
reasoning comes apart from the answer, reasoning_tokens = the budget + the closing text the
engine forces, an answer follows, a stream joins to the whole reply, `enable_thinking: false`
answers without thinking, and the greedy answer equals transformers' generate.
"""

from __future__ import annotations

import pytest
import torch

from omnilive.backends.native_prompt import load_omni_tokenizer
from omnilive.engine.thinking import BUDGET_EXHAUSTED_TEXT, NO_THINKING_TEXT
from tests.model.qwen3_tiny import build_tiny_qwen3
from tests.server.test_native_server import png_bytes
from tests.server.test_media_chat import data_url
from tests.server_process import ServerProcess

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # building the checkpoint and starting a server: ~10 s

API_KEY = "qwen3-test-key"
QUESTION = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module", params=["qwen3", "qwen3_moe"])
def tiny(request, tmp_path_factory):
    seed = {"qwen3": 3, "qwen3_moe": 8}[request.param]  # seeds whose greedy replies vary
    return build_tiny_qwen3(tmp_path_factory.mktemp(request.param), seed=seed, moe=request.param == "qwen3_moe")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return load_omni_tokenizer(tiny.directory)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with ServerProcess.of_checkpoint(tiny.directory, tmp_path_factory.mktemp("qwen3-data"), API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with server.openai_client() as openai_client:
        yield openai_client


def ask(client, **extra):
    model = client.models.list().data[0].id
    return client.chat.completions.create(model=model, messages=QUESTION, **{"temperature": 0, **extra})


def test_the_card_names_a_text_model(client, tiny):
    (model,) = client.models.list().data
    assert model.id == tiny.directory.name


@pytest.mark.parametrize("budget", [5, 12])
def test_the_thinking_budget_is_exact_and_an_answer_follows(client, tiny, tokenizer, budget):
    closing = tokenizer.encode(BUDGET_EXHAUSTED_TEXT)  # the tiny vocabulary spells it in many tokens
    max_tokens = budget + len(closing) + 6
    response = ask(client, max_tokens=max_tokens, extra_body={"max_thinking_tokens": budget})
    message, usage = response.choices[0].message, response.usage
    # the budget's sampled tokens, then the closing text up to </think> count as reasoning
    assert usage.completion_tokens_details.reasoning_tokens == budget + closing.index(tiny.end_think_id) + 1
    assert message.reasoning_content.endswith(BUDGET_EXHAUSTED_TEXT.split("</think>")[0])
    assert len(message.reasoning_content) > len(BUDGET_EXHAUSTED_TEXT.split("</think>")[0])  # its own thoughts first
    assert message.content  # the answer after the forced end of thinking
    assert usage.completion_tokens == max_tokens and response.choices[0].finish_reason == "length"


def test_min_thinking_tokens_above_the_budget_is_a_400(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as error:
        ask(client, max_tokens=8, extra_body={"max_thinking_tokens": 2, "min_thinking_tokens": 3})
    assert "min_thinking_tokens" in str(error.value)


def test_anthropic_style_thinking_sets_the_same_budget(client, tiny, tokenizer):
    closing = tokenizer.encode(BUDGET_EXHAUSTED_TEXT)
    response = ask(client, max_tokens=4 + len(closing) + 2,
                   extra_body={"thinking": {"type": "enabled", "budget_tokens": 4}})
    assert response.usage.completion_tokens_details.reasoning_tokens == 4 + closing.index(tiny.end_think_id) + 1
    disabled = ask(client, max_tokens=12, extra_body={"thinking": {"type": "disabled"}})
    closing = tokenizer.encode(NO_THINKING_TEXT)
    assert disabled.usage.completion_tokens_details.reasoning_tokens == closing.index(tiny.end_think_id) + 1


def test_a_stream_joins_to_the_whole_reply(client, tokenizer):
    max_tokens = 8 + len(tokenizer.encode(BUDGET_EXHAUSTED_TEXT)) + 6  # thoughts, closing text, an answer
    whole = ask(client, max_tokens=max_tokens, extra_body={"max_thinking_tokens": 8})
    assert whole.choices[0].message.reasoning_content and whole.choices[0].message.content
    model = client.models.list().data[0].id
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=max_tokens,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"max_thinking_tokens": 8}))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == whole.choices[0].message.reasoning_content
    assert content == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == \
        whole.usage.completion_tokens_details.reasoning_tokens


def test_effort_minimal_closes_the_think_block_at_once(client, tiny, tokenizer):
    closing = tokenizer.encode(NO_THINKING_TEXT)
    response = ask(client, max_tokens=len(closing) + 6, reasoning_effort="minimal")
    assert response.usage.completion_tokens_details.reasoning_tokens == closing.index(tiny.end_think_id) + 1
    assert response.choices[0].message.content


def test_enable_thinking_false_answers_as_transformers_generates(client, tiny, tokenizer):
    response = ask(client, max_tokens=10, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert response.usage.completion_tokens_details.reasoning_tokens == 0
    assert not response.choices[0].message.reasoning_content
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, enable_thinking=False)
    assert prompt[-4:] != tokenizer.encode("<think>\n")  # the template closed the think block
    with torch.no_grad():
        generated = tiny.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10)
    expected = generated[0, len(prompt):].tolist()
    assert len(set(expected)) > 3  # a varied reply
    assert response.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert response.usage.prompt_tokens == len(prompt)


def test_media_are_refused_with_a_400(client):
    from openai import BadRequestError

    model = client.models.list().data[0].id
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": data_url("image/png", png_bytes())}}]
    with pytest.raises(BadRequestError) as error:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
    assert "text only" in str(error.value)


def test_chat_template_kwargs_take_plain_values_only(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError):
        ask(client, max_tokens=4, extra_body={"chat_template_kwargs": {"enable_thinking": {"nested": True}}})
    assert ask(client, max_tokens=4).usage.completion_tokens == 4  # the server serves on


def test_realtime_replies_stream_their_reasoning_apart_within_the_budget(server, tiny, tokenizer):
    """The Realtime API on a thinking model: `max_thinking_tokens` (a session extension) caps the
    thinking, the reasoning arrives as response.reasoning_text.* events (never in the reply's
    text or speech), usage counts reasoning tokens; every standard event keeps the openai shape."""
    import json

    from websockets.sync.client import connect

    from tests.server.test_realtime import GA_EVENTS, check_event

    budget, closing = 5, tokenizer.encode(BUDGET_EXHAUSTED_TEXT)
    url = server.url.replace("http", "ws", 1) + "/v1/realtime"
    events = []
    with connect(url, additional_headers=server.auth_headers, max_size=None) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"], "max_thinking_tokens": budget,
            "temperature": 0}}))  # greedy: the model cannot pick its zeroed </think> by chance
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is two plus two?"}]}}))
        limit = budget + len(closing) + 24  # room for an answer past a few blank tokens
        ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": limit}}))
        while not events or events[-1]["type"] != "response.done":
            events.append(json.loads(ws.recv(timeout=60)))
    for event in events:
        if not event["type"].startswith("response.reasoning_text."):  # our extension's events
            check_event(event, GA_EVENTS)
    updated = next(e for e in events if e["type"] == "session.updated")
    assert updated["session"]["max_thinking_tokens"] == budget
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    (done,) = [e for e in events if e["type"] == "response.reasoning_text.done"]
    assert deltas == done["text"] and done["text"].endswith(BUDGET_EXHAUSTED_TEXT.split("</think>")[0])
    (text,) = [e["text"] for e in events if e["type"] == "response.output_text.done"]
    assert text and "Considering the limited time" not in text  # the answer, without the reasoning
    usage = events[-1]["response"]["usage"]
    assert usage["output_token_details"]["reasoning_tokens"] == budget + closing.index(tiny.end_think_id) + 1


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}


def test_a_thinking_model_calls_tools_after_its_reasoning(client):
    """Reasoning stays free; the call after it is held to the function's schema (random weights)."""
    import json

    import jsonschema

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    for seed in range(3):
        choice = ask(client, tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                     parallel_tool_calls=False,
                     temperature=1.0, seed=seed, max_tokens=600, extra_body={"max_thinking_tokens": 4}).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.reasoning_content
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    reply = ask(client, response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}},
                temperature=1.0, seed=9, max_tokens=300,
                extra_body={"chat_template_kwargs": {"enable_thinking": False}}).choices[0]
    assert reply.finish_reason == "stop" and not reply.message.reasoning_content
    jsonschema.validate(json.loads(reply.message.content), WEATHER)
