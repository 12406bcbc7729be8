"""The native engine on tiny random Qwen3-VL and Qwen3-VL-MoE checkpoints (float32), against
transformers' generate: greedy replies equal, requests stepped together equal each alone, with
prefill chunks of 16 tokens that cut through images and videos (so through their DeepStack
features)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from omnilive.backends.native_prompt import chat_template_of
from omnilive.backends.native_vl import QWEN3_VL_CHAT_TEMPLATE, Qwen3VLProcessor
from omnilive.model.qwen3_vl import Qwen3VL
from omnilive.types import EngineRequest, Finished, ImageInput, Message, ReasoningDelta, SamplingParams, TextDelta
from tests.backends.native_backend import (
    clip,
    media_token_types,
    picture,
    reference_greedy,
    run,
    started_backend,
    vision_kwargs,
)
from tests.model.qwen3_vl_tiny import END_THINK, THINK, build_tiny_qwen3_vl

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module", params=["dense", "moe"])
def tiny(request, tmp_path_factory):
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp(f"qwen3_vl_{request.param}"), seed=6,
                               moe=request.param == "moe")


@pytest.fixture(scope="module")
def engine(tiny):
    yield from started_backend(tiny.directory)


def reference_tokens(tiny, engine, messages) -> list[int]:
    """transformers' greedy generate on the same checkpoint and our processor's inputs (equal to
    transformers' processor's: tests/media/test_qwen3_vl_processor.py)."""
    prompt = engine.model.processor.build(messages)
    config = engine.model.thinker.vl_config
    ids = torch.tensor([prompt.input_ids])
    kwargs = {"mm_token_type_ids": media_token_types(ids, config.image_token_id, config.video_token_id),
              **vision_kwargs(prompt.media)}
    return reference_greedy(tiny.model, engine, ids, kwargs, GREEDY.max_tokens)


MESSAGES = {
    "text": (Message("user", ("Say hello in one short sentence!",)),),
    "image": (Message("user", ("What is in this?", ImageInput(picture(0, (90, 60))), "Answer briefly.")),),
    "two_images": (Message("user", (ImageInput(picture(1, (64, 64))), "and", ImageInput(picture(2, (96, 40))))),),
    "video": (Message("user", ("What happens?", clip(frames=5))),),
}


def assert_told(engine, outputs, expected: list[int]) -> None:
    """The reply's reasoning and text together say the expected tokens. A random model may say
    <think> (in the vocabulary): at the reply's start it opens a block of reasoning, later it is
    text; compared without the markers."""
    tokenizer = engine.model.tokenizer
    shown = [t for t in expected if t not in tokenizer.stop_token_ids and t not in (THINK, END_THINK)]
    assert len(set(shown)) > 1  # not one token repeated: the comparison means something
    told = "".join(out.text for out in outputs if isinstance(out, (ReasoningDelta, TextDelta)))
    assert told.replace("<think>", "").replace("</think>", "") == tokenizer.decode(shown, skip_special_tokens=True)


def reply_text(outputs) -> tuple[str, str]:
    """(reasoning, content) of a reply."""
    return tuple("".join(out.text for out in outputs if isinstance(out, kind)) for kind in (ReasoningDelta, TextDelta))


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_greedy_reply_equals_transformers_generate(engine, tiny, case):
    messages = MESSAGES[case]
    expected = reference_tokens(tiny, engine, messages)
    outputs = run(engine, EngineRequest(case, messages, GREEDY))
    finished = outputs[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.completion_tokens == len(expected) >= 8
    assert (finished.usage.image_prompt_tokens > 0) == (case != "text")
    assert_told(engine, outputs, expected)
    if THINK not in expected:
        assert not any(isinstance(out, ReasoningDelta) for out in outputs)


def test_requests_stepped_together_equal_each_alone(engine):
    alone = {case: reply_text(run(engine, EngineRequest(case, messages, GREEDY)))
             for case, messages in MESSAGES.items()}

    async def together():
        async def one(case):
            return case, reply_text([out async for out in engine.generate(EngineRequest(f"{case}-b", MESSAGES[case],
                                                                                         GREEDY))])

        return dict(await asyncio.gather(*(one(case) for case in MESSAGES)))

    assert asyncio.run(together()) == alone


def test_loaded_as_qwen3_vl(engine, tiny):
    moe = "moe" in tiny.directory.name
    assert isinstance(engine.model.thinker, Qwen3VL) and isinstance(engine.model.processor, Qwen3VLProcessor)
    assert engine.model.family == ("Qwen3-VL-MoE" if moe else "Qwen3-VL") and engine.model.talker is None
    assert engine.card.output_modalities == ("text",)
    assert engine.model.processor.input_modalities == ("text", "image", "video")


def test_a_second_turn_reuses_cached_blocks_and_encoder_rows_and_replies_as_transformers(engine, tiny):
    """The next turn carries the first turn's image: its prompt blocks come from the KV cache
    and its encoder rows (merger and DeepStack rows together) from the media cache; the reply is
    still transformers' greedy one."""
    first_turn = MESSAGES["image"]
    first = run(engine, EngineRequest("turn-1", first_turn, GREEDY))
    said = "".join(out.text for out in first if isinstance(out, (ReasoningDelta, TextDelta)))
    second_turn = (*first_turn, Message("assistant", (said,)),
                   Message("user", ("And this?", ImageInput(picture(9, (128, 64))))))
    hits = engine.media_cache.hits
    outputs = run(engine, EngineRequest("turn-2", second_turn, GREEDY))
    assert engine.media_cache.hits == hits + 1  # the first turn's image was not encoded again
    assert outputs[-1].usage.cached_prompt_tokens >= 16
    assert_told(engine, outputs, reference_tokens(tiny, engine, second_turn))


def test_prompt_layout_without_a_default_system_prompt(engine, tiny, tmp_path):
    prompt = engine.model.processor.build((Message("user", (ImageInput(picture(0, (90, 60))), "Describe.")),))
    text = engine.model.tokenizer.decode(prompt.input_ids)
    # 90 x 60 → 96 x 64 pixels (multiples of 32) → 6 x 4 patches of 16 → 3 x 2 merge units
    assert text == ("<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>Describe.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert chat_template_of(tiny.directory, QWEN3_VL_CHAT_TEMPLATE) == QWEN3_VL_CHAT_TEMPLATE
    assert chat_template_of(tmp_path, QWEN3_VL_CHAT_TEMPLATE) == QWEN3_VL_CHAT_TEMPLATE
