"""`omnilive serve --model DIR` on tiny random Qwen2.5-VL and Qwen2-VL checkpoints, through the OpenAI client.

A real server subprocess; requests carry an image or a video as data URLs. The greedy reply
equals transformers' generate on the same checkpoint, with transformers' own processor's inputs
for the image (our processor's equality with it is tests/media/test_processor_parity.py).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from omnilive.backends.native_prompt import load_omni_tokenizer
from tests.model.vl_tiny import IMAGE, VIDEO, build_tiny_vl, transformers_vl_processor
from tests.server.test_media_chat import data_url, text_video
from tests.server.test_native_server import png_bytes, wav_bytes
from tests.server_process import ServerProcess

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # building the checkpoint and starting a server: ~15 s

API_KEY = "vl-test-key"
MAX_TOKENS = 12


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])  # Qwen2-VL: QVQ's architecture
def tiny(request, tmp_path_factory):
    # seeds that give a varied greedy reply
    seed = {"qwen2_5_vl": 6, "qwen2_vl": 6}[request.param]
    return build_tiny_vl(tmp_path_factory.mktemp(request.param), seed=seed, family=request.param)


@pytest.fixture(scope="module")
def client(tiny, tmp_path_factory):
    with ServerProcess.of_checkpoint(tiny.directory, tmp_path_factory.mktemp("vl-data"), API_KEY) as running:
        with running.openai_client() as openai_client:
            yield openai_client


def ask(client, *parts: dict, **extra):
    model = client.models.list().data[0].id
    content = [{"type": "text", "text": "What is in this?"}, *parts]
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **extra)


def image_part() -> dict:
    return {"type": "image_url", "image_url": {"url": data_url("image/png", png_bytes())}}


def test_models_shows_the_card(client, tiny):
    (model,) = client.models.list().data
    assert model.id == tiny.directory.name and model.owned_by == "omnilive"


def test_greedy_image_reply_equals_transformers_generate(client, tiny):
    from PIL import Image

    response = ask(client, image_part(), temperature=0, max_tokens=MAX_TOKENS)
    reference = transformers_vl_processor(tiny.directory)
    chat = [{"role": "user", "content": [{"type": "text", "text": "What is in this?"}, {"type": "image"}]}]
    text = reference.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = reference(text=[text], images=[Image.open(io.BytesIO(png_bytes())).convert("RGB")], return_tensors="pt")
    tokenizer = load_omni_tokenizer(tiny.directory)
    tiny.model.model.rope_deltas = None
    with torch.no_grad():
        generated = tiny.model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS,
                                        eos_token_id=sorted(tokenizer.stop_token_ids))
    expected = generated[0, inputs["input_ids"].shape[1]:].tolist()
    shown = [t for t in expected if t not in tokenizer.stop_token_ids]
    assert len(set(shown)) > 3  # a varied reply, not one token repeated
    assert response.choices[0].message.content == tokenizer.decode(shown, skip_special_tokens=True)
    assert response.usage.completion_tokens == len(expected)
    assert response.usage.prompt_tokens == inputs["input_ids"].shape[1]
    assert int((inputs["input_ids"] == IMAGE).sum()) > 0 and int((inputs["input_ids"] == VIDEO).sum()) == 0


def test_text_reply_to_a_video(client):
    video = {"type": "video_url", "video_url": {"url": data_url("video/mp4", text_video("VL", seconds=2.0))}}
    response = ask(client, video, temperature=0, max_tokens=MAX_TOKENS)
    assert isinstance(response.choices[0].message.content, str) and response.choices[0].message.content
    # 2 s at 2 fps: 4 frames of 640x160 → within 56x84 pixels: 2 temporal patches of 1 x 3 merge units,
    # plus the chat's own tokens; its audio track is left out
    assert response.usage.prompt_tokens > 2 * 3
    assert response.choices[0].finish_reason in ("stop", "length")


def test_audio_input_is_a_400(client):
    import openai

    beep = 0.2 * np.sin(2 * np.pi * 330 * np.arange(8_000) / 16_000)
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(beep, 16_000)).decode(),
                                                    "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, audio, max_tokens=4)
    assert error.value.status_code == 400 and error.value.param == "messages"
    assert "cannot hear" in error.value.message


def test_audio_output_is_a_400(client):
    import openai

    with pytest.raises(openai.BadRequestError) as error:
        ask(client, image_part(), modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "wav"},
            max_tokens=4)
    assert error.value.status_code == 400 and error.value.param == "modalities"


def test_server_still_serves_after_bad_requests(client):
    assert ask(client, image_part(), temperature=0, max_tokens=3).choices[0].message.content


def test_a_template_without_tools_still_calls_them_with_valid_arguments(client):
    """Qwen2.5-VL's and Qwen2-VL's templates know no tools: they are written into the prompt
    (backends/tool_prompt.py) and the reply, held to the schema, parses as a call."""
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
              "required": ["colour"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "paint", "parameters": schema}}]
    for seed in range(2):
        choice = ask(client, image_part(), tools=tools, tool_choice="required", parallel_tool_calls=False,
                     temperature=1.0, seed=seed, max_tokens=200).choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        assert call.function.name == "paint"
        jsonschema.validate(json.loads(call.function.arguments), schema)
