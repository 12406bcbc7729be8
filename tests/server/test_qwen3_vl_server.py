"""`omnilive serve --model DIR` on tiny random Qwen3-VL checkpoints (a dense Instruct one and a
MoE Thinking one), through the OpenAI client.

A real server subprocess; requests carry an image or a video as data URLs. The greedy reply
equals transformers' generate on transformers' own Qwen3VLProcessor's inputs. The Thinking
checkpoint's template opens the think block and its `</think>` and stop rows are zeroed
(tests/model/qwen3_vl_tiny.py), so it thinks until the budget ends its thoughts: the reasoning
comes apart as reasoning_content, reasoning_tokens = the budget + the closing text, an answer
follows, and a stream joins to the whole reply.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from omnilive.backends.native_prompt import load_omni_tokenizer
from omnilive.engine.thinking import BUDGET_EXHAUSTED_TEXT
from tests.media.test_qwen3_vl_processor import transformers_qwen3_vl_processor
from tests.model.qwen3_vl_tiny import END_THINK, build_tiny_qwen3_vl
from tests.server.test_media_chat import data_url, text_video
from tests.server.test_native_server import png_bytes, wav_bytes
from tests.server_process import ServerProcess

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # building the checkpoint and starting a server: ~15 s

API_KEY = "qwen3-vl-test-key"
MAX_TOKENS = 12
VARIANTS = {"instruct": {"moe": False, "thinking": False, "seed": 6},
            "moe_thinking": {"moe": True, "thinking": True, "seed": 6}}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def tiny(variant, tmp_path_factory):
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp(f"qwen3_vl_{variant}"), **VARIANTS[variant])


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return load_omni_tokenizer(tiny.directory)


@pytest.fixture(scope="module")
def client(tiny, tmp_path_factory):
    with ServerProcess.of_checkpoint(tiny.directory, tmp_path_factory.mktemp("qwen3-vl-data"), API_KEY) as running:
        with running.openai_client() as openai_client:
            yield openai_client


def image_part() -> dict:
    return {"type": "image_url", "image_url": {"url": data_url("image/png", png_bytes())}}


def ask(client, *parts: dict, **extra):
    model = client.models.list().data[0].id
    content = [{"type": "text", "text": "What is in this?"}, *parts]
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, **extra)


def test_models_shows_the_card(client, tiny):
    (model,) = client.models.list().data
    assert model.id == tiny.directory.name and model.owned_by == "omnilive"


def test_greedy_image_reply_equals_transformers_generate(client, tiny, tokenizer, variant):
    from PIL import Image

    response = ask(client, image_part(), max_tokens=MAX_TOKENS)
    reference = transformers_qwen3_vl_processor(tiny.directory)
    chat = [{"role": "user", "content": [{"type": "text", "text": "What is in this?"}, {"type": "image"}]}]
    text = reference.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = reference(text=[text], images=[Image.open(io.BytesIO(png_bytes())).convert("RGB")], return_tensors="pt")
    tiny.model.model.rope_deltas = None
    with torch.no_grad():
        generated = tiny.model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS,
                                        eos_token_id=sorted(tokenizer.stop_token_ids))
    expected = generated[0, inputs["input_ids"].shape[1]:].tolist()
    shown = [t for t in expected if t not in tokenizer.stop_token_ids]
    assert len(set(shown)) > 3  # a varied reply, not one token repeated
    message = response.choices[0].message
    said = tokenizer.decode(shown, skip_special_tokens=True)
    if variant == "moe_thinking":  # the template opened the think block and no budget closes it
        assert message.reasoning_content == said and not message.content
        assert response.usage.completion_tokens_details.reasoning_tokens == len(expected)
    else:
        assert message.content == said and not getattr(message, "reasoning_content", None)
    assert response.usage.completion_tokens == len(expected)
    assert response.usage.prompt_tokens == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("variant", ["moe_thinking"], indirect=True)  # an Instruct model does not think
def test_the_thinking_budget_is_exact_and_an_answer_follows(client, tokenizer, variant):
    budget, closing = 6, tokenizer.encode(BUDGET_EXHAUSTED_TEXT)
    max_tokens = budget + len(closing) + 6
    response = ask(client, image_part(), max_tokens=max_tokens, extra_body={"max_thinking_tokens": budget})
    message, usage = response.choices[0].message, response.usage
    assert usage.completion_tokens_details.reasoning_tokens == budget + closing.index(END_THINK) + 1
    assert message.reasoning_content.endswith(BUDGET_EXHAUSTED_TEXT.split("</think>")[0])
    assert message.content  # the answer after the forced end of thinking
    model = client.models.list().data[0].id
    content = [{"type": "text", "text": "What is in this?"}, image_part()]
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=max_tokens,
        stream=True, extra_body={"max_thinking_tokens": budget}))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == message.reasoning_content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content


def test_text_reply_to_a_video(client):
    video = {"type": "video_url", "video_url": {"url": data_url("video/mp4", text_video("VL", seconds=2.0))}}
    response = ask(client, video, max_tokens=MAX_TOKENS, extra_body={"max_thinking_tokens": 2})
    message = response.choices[0].message
    assert message.content or message.reasoning_content
    assert response.usage.prompt_tokens > 2 * 3 and response.choices[0].finish_reason in ("stop", "length")


def test_audio_input_is_a_400(client):
    import openai

    beep = 0.2 * np.sin(2 * np.pi * 330 * np.arange(8_000) / 16_000)
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(beep, 16_000)).decode(),
                                                    "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, audio, max_tokens=4)
    assert error.value.status_code == 400 and "cannot hear" in error.value.message
    assert ask(client, image_part(), max_tokens=3).usage.completion_tokens == 3  # the server serves on
