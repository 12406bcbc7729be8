"""Text chat completions through the official OpenAI client, against the real default engine.

Expected outputs are derived from the server's own greedy answer where possible (stop, stream
== whole), so the tests check the server's contract, not the model's taste.
"""

from __future__ import annotations

import math
import re
import time

import pytest

from tests.metrics import metric, wait_until_idle

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def greedy(client, model_id, messages=QUESTION, **kwargs):
    return client.chat.completions.create(model=model_id, messages=messages, temperature=0, seed=7, **kwargs)


def test_text_chat(client, model_id):
    response = greedy(client, model_id, [{"role": "user", "content": "What is the capital of France?"}], max_tokens=40)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == model_id
    assert response.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert "paris" in choice.message.content.lower()
    assert choice.finish_reason in ("stop", "length")


def test_stream_equals_whole(client, model_id):
    whole = greedy(client, model_id, max_tokens=24)
    chunks = list(greedy(client, model_id, max_tokens=24, stream=True, stream_options={"include_usage": True}))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client, model_id):
    chunks = list(greedy(client, model_id, max_tokens=4, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_multi_turn_uses_earlier_turns(client, model_id):
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "My name is Zorblax. Please remember it."},
        {"role": "assistant", "content": "Nice to meet you, Zorblax! I will remember your name."},
        {"role": "user", "content": "What is my name?"},
    ]
    answer = greedy(client, model_id, messages, max_tokens=30).choices[0].message.content
    assert "zorblax" in answer.lower()


def test_max_tokens_gives_finish_reason_length(client, model_id):
    response = greedy(client, model_id, max_tokens=3)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3

    newer_name = greedy(client, model_id, max_completion_tokens=2)
    assert newer_name.choices[0].finish_reason == "length"
    assert newer_name.usage.completion_tokens == 2


def test_stop_sequence_cuts_the_answer(client, model_id):
    free = greedy(client, model_id, max_tokens=30).choices[0].message.content
    words = re.findall(r"[A-Za-z]{4,}", free)
    assert len(words) >= 3, free
    stop_word = words[2]
    stopped = greedy(client, model_id, max_tokens=30, stop=[stop_word, "\u2603"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == free[: free.index(stop_word)]


def test_logprobs_shape(client, model_id):
    response = greedy(client, model_id, max_tokens=5, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == response.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 3
        top = [t.logprob for t in token.top_logprobs]
        assert top == sorted(top, reverse=True)
        # greedy: the chosen token is the most likely one
        assert math.isclose(token.logprob, top[0], abs_tol=1e-4)

    plain = greedy(client, model_id, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_usage_reports_the_prompt_tokens_found_in_the_cache(client, model_id):
    messages = [{"role": "system", "content": "You answer in French, in one short sentence, about the sea. " * 4},
                {"role": "user", "content": "Why is the sea salty?"}]
    first = greedy(client, model_id, messages, max_tokens=4).usage
    again = greedy(client, model_id, [*messages[:1], {"role": "user", "content": "Why are waves white?"}],
                   max_tokens=4).usage
    # the shared system prompt's full KV blocks are reused; the new question is computed
    assert first.prompt_tokens_details.cached_tokens < again.prompt_tokens_details.cached_tokens
    assert 40 < again.prompt_tokens_details.cached_tokens < again.prompt_tokens


def test_usage_is_filled(client, model_id):
    response = greedy(client, model_id, max_tokens=8)
    usage = response.usage
    assert usage.prompt_tokens > 5
    assert 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_models_list_and_retrieve(client, model_id, http):
    listed = client.models.list().data
    assert [m.id for m in listed] == [model_id]
    model = client.models.retrieve(model_id)
    assert model.id == model_id and model.object == "model"
    card = http.get(f"/v1/models/{model_id}").json()
    assert card["context_length"] > 0 and card["voices"] and card["default_voice"] in card["voices"]
    assert {part["role"] for part in card["parts"]} >= {"llm"}


def test_client_disconnect_stops_generation(client, model_id, http):
    aborted_before = metric(http, 'omnilive_requests_finished_total{reason="aborted"}')
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Write a very long story about the sea."}],
        max_tokens=1500, stream=True,
    )
    received = 0
    for _ in stream:
        received += 1
        if received == 4:
            break
    stream.close()

    assert wait_until_idle(http, timeout_s=10) == 0
    assert metric(http, 'omnilive_requests_finished_total{reason="aborted"}') == aborted_before + 1
    outputs = metric(http, "omnilive_engine_outputs_total")
    time.sleep(1.0)
    assert metric(http, "omnilive_engine_outputs_total") == outputs  # nothing more was generated

    assert greedy(client, model_id, max_tokens=2).choices[0].finish_reason == "length"


@pytest.mark.parametrize("route", ["/health", "/metrics"])
def test_health_and_metrics_stay_open(server, route):
    import httpx

    assert httpx.get(server.url + route).status_code == 200
