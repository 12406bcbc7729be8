"""`omnilive serve --model DIR` on a tiny random Qwen2-VL checkpoint named as QVQ, through the
OpenAI client: a model that reasons in plain text and answers after "**Final Answer**".

A real server subprocess. The model never stops nor writes the phrase by itself (its stop rows
are zeroed, tests/model/vl_tiny.py `build_tiny_qvq`), so every budget is reached: the reply
before the forced phrase is `reasoning_content`, the phrase and the answer after it are
`content`, reasoning_tokens = the budget + the forced text up to the phrase's end, a stream
joins to the whole reply, the Realtime API splits it the same way. The same checkpoint under
another name is a plain Qwen2-VL (its replies = transformers' generate: test_vl_server.py).
"""

from __future__ import annotations

import json

import pytest

from omnilive.backends.native_omni import answer_phrase
from omnilive.backends.native_prompt import load_omni_tokenizer
from omnilive.backends.native_vl import is_qvq
from omnilive.engine.thinking import QVQ_ANSWER_PHRASE, forced_answer_text
from tests.model.vl_tiny import build_tiny_qvq
from tests.server.test_media_chat import data_url
from tests.server.test_native_server import png_bytes
from tests.server_process import ServerProcess

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # building the checkpoint and starting a server: ~15 s

API_KEY = "qvq-test-key"
PHRASE = QVQ_ANSWER_PHRASE


def question() -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url("image/png", png_bytes())}},
        {"type": "text", "text": "What is in this picture?"}]}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qvq(tmp_path_factory.mktemp("checkpoints") / "QVQ-72B-Preview-tiny", seed=6)


@pytest.fixture(scope="module")
def forced(tiny):
    """The text the budget forces, tokenised, and how many of its tokens end the phrase."""
    tokenizer = load_omni_tokenizer(tiny.directory)
    ids = tokenizer.encode(forced_answer_text(PHRASE))
    return ids, next(n for n in range(1, len(ids) + 1) if PHRASE in tokenizer.decode(ids[:n]))


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with ServerProcess.of_checkpoint(tiny.directory, tmp_path_factory.mktemp("qvq-data"), API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with server.openai_client() as openai_client:
        yield openai_client


def ask(client, **extra):
    model = client.models.list().data[0].id
    return client.chat.completions.create(model=model, messages=question(), **{"temperature": 0, **extra})


@pytest.mark.parametrize("budget", [5, 12])
def test_the_budget_forces_the_answer_phrase_and_an_answer_follows(client, forced, budget):
    ids, through_phrase = forced
    max_tokens = budget + len(ids) + 6
    response = ask(client, max_tokens=max_tokens, extra_body={"max_thinking_tokens": budget})
    message, usage = response.choices[0].message, response.usage
    assert usage.completion_tokens_details.reasoning_tokens == budget + through_phrase
    assert message.reasoning_content.endswith("\n\n") and message.reasoning_content.strip()  # its own thoughts
    assert PHRASE not in message.reasoning_content
    assert message.content.startswith(PHRASE + "\n\n") and len(message.content) > len(PHRASE) + 2  # an answer
    assert usage.completion_tokens == max_tokens and response.choices[0].finish_reason == "length"


def test_without_a_budget_it_reasons_to_the_end(client):
    response = ask(client, max_tokens=10)
    assert response.choices[0].message.reasoning_content and not response.choices[0].message.content
    assert response.usage.completion_tokens_details.reasoning_tokens == 10


def test_effort_minimal_answers_at_once(client, forced):
    ids, through_phrase = forced
    response = ask(client, max_tokens=len(ids) + 4, reasoning_effort="minimal")
    assert response.usage.completion_tokens_details.reasoning_tokens == through_phrase
    assert response.choices[0].message.content.startswith(PHRASE)


def test_a_stream_joins_to_the_whole_reply(client, forced):
    max_tokens = 8 + len(forced[0]) + 6
    whole = ask(client, max_tokens=max_tokens, extra_body={"max_thinking_tokens": 8})
    model = client.models.list().data[0].id
    chunks = list(client.chat.completions.create(model=model, messages=question(), temperature=0,
                                                 max_tokens=max_tokens, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"max_thinking_tokens": 8}))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (reasoning, content) == (whole.choices[0].message.reasoning_content, whole.choices[0].message.content)
    assert content.startswith(PHRASE)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == \
        whole.usage.completion_tokens_details.reasoning_tokens


def test_min_thinking_tokens_is_a_400(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as error:
        ask(client, max_tokens=8, extra_body={"max_thinking_tokens": 6, "min_thinking_tokens": 2})
    assert "min_thinking_tokens" in str(error.value) and "plain text" in str(error.value)


def test_realtime_replies_reason_apart_and_answer_after_the_phrase(server, forced):
    """The Realtime API takes the same engine path: reasoning events, then the phrase and the
    answer as the reply's text; usage counts the reasoning tokens."""
    from websockets.sync.client import connect

    budget, (ids, through_phrase) = 4, forced
    events = []
    with connect(server.url.replace("http", "ws", 1) + "/v1/realtime", additional_headers=server.auth_headers,
                 max_size=None) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"], "max_thinking_tokens": budget, "temperature": 0}}))
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is it?"}]}}))
        ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": budget + len(ids) + 4}}))
        while not events or events[-1]["type"] != "response.done":
            events.append(json.loads(ws.recv(timeout=60)))
    (reasoning,) = [e["text"] for e in events if e["type"] == "response.reasoning_text.done"]
    (text,) = [e["text"] for e in events if e["type"] == "response.output_text.done"]
    assert reasoning.endswith("\n\n") and PHRASE not in reasoning and text.startswith(PHRASE)
    assert events[-1]["response"]["usage"]["output_token_details"]["reasoning_tokens"] == budget + through_phrase


def test_only_a_checkpoint_named_qvq_reasons_in_plain_text(tmp_path):
    def checkpoint(path, **config):
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", **config}))
        return path

    assert not is_qvq(checkpoint(tmp_path / "Qwen2-VL-7B-Instruct"))
    assert is_qvq(checkpoint(tmp_path / "QVQ-72B-Preview"))
    assert is_qvq(checkpoint(tmp_path / "hub" / "models--Qwen--QVQ-72B-Preview" / "snapshots" / "0123abc"))
    assert is_qvq(checkpoint(tmp_path / "mine", _name_or_path="Qwen/QVQ-72B-Preview"))
    # OMNILIVE_REASONING_ANSWER_PHRASE: auto follows the checkpoint; none turns it off; text sets it
    assert answer_phrase("auto", PHRASE) == PHRASE and answer_phrase("auto", None) is None
    assert answer_phrase("none", PHRASE) is None and answer_phrase("", PHRASE) is None
    assert answer_phrase("Answer:", None) == "Answer:"
