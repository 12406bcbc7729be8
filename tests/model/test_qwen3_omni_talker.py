"""Our Qwen3-Omni talker and code predictor against transformers' (tiny random checkpoint,
float32): the talker's prefill input, every codebook of every frame of greedy generate, loading
(every `talker.` key consumed), voices, and seeded sampling batched == alone."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from omnilive.engine.qwen3_talker_generate import (
    QWEN3_PREDICTOR_GREEDY,
    QWEN3_TALKER_GREEDY,
    qwen3_talker_step,
    start_qwen3_talker_stream,
)
from omnilive.model.omni_checkpoint import load_prefixed_tensors
from omnilive.model.qwen3_omni import load_qwen3_omni_thinker
from omnilive.model.qwen3_omni_talker import (
    TALKER_PREFIX,
    Qwen3OmniTalkerConfig,
    build_talker_prefill,
    load_qwen3_omni_talker,
    new_talker_text_inputs,
)
from omnilive.model.weights import WeightsMismatchError
from tests.model.qwen3_omni_tiny import CHAT_IDS, build_tiny_qwen3_omni

pytest.importorskip("transformers")

IM_START, IM_END, SYSTEM, USER, ASSISTANT = (CHAT_IDS[f"{name}_token_id"]
                                              for name in ("im_start", "im_end", "system", "user", "assistant"))
NEWLINE = 94
CODEBOOK, TALKER_VOCAB, CODEC_EOS = 16, 48, 40
MAX_FRAMES = 10
REPLY_TOKENS = 6


def chat_prompt(seed: int, user_tokens: int = 5, system: bool = True) -> list[int]:
    words = torch.randint(10, 130, (user_tokens + 2,), generator=torch.Generator().manual_seed(seed)).tolist()
    prompt = [IM_START, SYSTEM, *words[:2], IM_END, NEWLINE] if system else []
    return prompt + [IM_START, USER, *words[2:], IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_omni(tmp_path_factory.mktemp("qwen3_omni_talker"), seed=2)


@pytest.fixture(scope="module")
def ours(tiny):
    return load_qwen3_omni_talker(tiny.directory, dtype=torch.float32)


@pytest.fixture(scope="module")
def thinker(tiny):
    return load_qwen3_omni_thinker(tiny.directory, dtype=torch.float32)


def reference_generate(tiny, prompt: list[int], speaker: str,
                       **kwargs) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """transformers' generate, greedy: (reply tokens, talker prefill inputs [L, H], codes [G, n])."""
    model = tiny.model
    seen = {}
    talker_generate, chunked_decode = model.talker.generate, model.code2wav.chunked_decode

    def keep_prefill(**kwargs):
        seen["prefill"] = kwargs["inputs_embeds"][0]
        return talker_generate(**kwargs)

    def keep_codes(codes, **kwargs):
        seen["codes"] = codes[0]
        return chunked_decode(codes, **kwargs)

    model.talker.generate, model.code2wav.chunked_decode = keep_prefill, keep_codes
    try:
        sequences, _ = model.generate(
            input_ids=torch.tensor([prompt]), speaker=speaker, thinker_max_new_tokens=REPLY_TOKENS,
            thinker_do_sample=False, talker_do_sample=False, talker_max_new_tokens=MAX_FRAMES,
            talker_suppress_tokens=[t for t in range(CODEBOOK, TALKER_VOCAB) if t != CODEC_EOS], **kwargs)
    finally:
        del model.talker.generate, model.code2wav.chunked_decode
    return sequences[0, len(prompt):].tolist(), seen["prefill"], seen["codes"]


@torch.inference_mode()
def our_generate(ours, thinker, prompt: list[int], reply: list[int], voice: str, seed: int | None = None,
                 greedy: bool = True) -> tuple[torch.Tensor, list[list[int]]]:
    """Our talker on the reply the thinker fed back (all but its last token)."""
    embed = thinker.model.embed_tokens
    ids = torch.tensor(prompt)
    prefill = build_talker_prefill(ours, embed, ids, embed(ids), embed(torch.tensor(reply[:1])),
                                   ours.talker_config.speaker(voice))
    text_inputs = new_talker_text_inputs(ours, embed, prefill)
    for token in reply[1:-1]:
        text_inputs.push(ours.text_projection(embed(torch.tensor(token))))
    text_inputs.finish()
    cache, predictor_cache = ours.make_cache(1, 64), ours.make_predictor_cache(1)
    kwargs = {"sampling": QWEN3_TALKER_GREEDY, "predictor_sampling": QWEN3_PREDICTOR_GREEDY} if greedy else {}
    stream = start_qwen3_talker_stream(ours, prefill, text_inputs, cache, 0, seed=seed, max_new_tokens=MAX_FRAMES,
                                       **kwargs)
    while not stream.finished:
        qwen3_talker_step(ours, [stream], cache, predictor_cache)
    return prefill.inputs_embeds, stream.frames


@pytest.mark.parametrize(("seed", "voice", "system"), [(1, "Chelsie", True), (2, "ETHAN", False)])
def test_greedy_codes_of_every_codebook_match_reference_generate(tiny, ours, thinker, seed, voice, system):
    prompt = chat_prompt(seed, system=system)
    reply, reference_prefill, reference_codes = reference_generate(tiny, prompt, voice.lower())
    prefill, frames = our_generate(ours, thinker, prompt, reply, voice)
    torch.testing.assert_close(prefill, reference_prefill, rtol=1e-5, atol=1e-5)
    assert len(frames) >= 2, "a test that checks codes needs codes"
    assert torch.tensor(frames).T.tolist() == reference_codes.tolist()


def test_long_reply_keeps_text_inputs_in_order(tiny, ours, thinker):
    """A prompt whose assistant turn holds text after "assistant\\n": those tokens come first.
    (Without a thinker EOS id: the reference's re-placing of tts_eos by where the thinker's EOS
    fell assumes the reply starts the turn, and would put it on the reply's last token.)"""
    prompt = chat_prompt(4) + [20, 21, 22]
    reply, reference_prefill, reference_codes = reference_generate(tiny, prompt, "chelsie",
                                                                   thinker_eos_token_id=None)
    prefill, frames = our_generate(ours, thinker, prompt, reply, "chelsie")
    torch.testing.assert_close(prefill, reference_prefill, rtol=1e-5, atol=1e-5)
    assert torch.tensor(frames).T.tolist() == reference_codes.tolist()


@torch.inference_mode()
def test_seeded_sampling_is_the_same_batched_and_alone(ours, thinker):
    embed = thinker.model.embed_tokens
    setups = [(chat_prompt(5), [30, 31, 32, 33], 11), (chat_prompt(6, user_tokens=9), [40, 41], 12)]

    def start(cache, slot, prompt, reply, seed):
        ids = torch.tensor(prompt)
        prefill = build_talker_prefill(ours, embed, ids, embed(ids), embed(torch.tensor(reply[:1])), 46)
        text_inputs = new_talker_text_inputs(ours, embed, prefill)
        for token in reply[1:]:
            text_inputs.push(ours.text_projection(embed(torch.tensor(token))))
        text_inputs.finish()
        return start_qwen3_talker_stream(ours, prefill, text_inputs, cache, slot, seed=seed, max_new_tokens=8)

    alone = []
    for prompt, reply, seed in setups:
        cache, predictor_cache = ours.make_cache(1, 64), ours.make_predictor_cache(1)
        stream = start(cache, 0, prompt, reply, seed)
        while not stream.finished:
            qwen3_talker_step(ours, [stream], cache, predictor_cache)
        alone.append(stream.frames)
    cache, predictor_cache = ours.make_cache(2, 64), ours.make_predictor_cache(2)
    streams = [start(cache, slot, *setup) for slot, setup in enumerate(setups)]
    while any(not s.finished for s in streams):
        qwen3_talker_step(ours, [s for s in streams if not s.finished], cache, predictor_cache)
    assert [s.frames for s in streams] == alone
    assert sum(len(frames) for frames in alone) >= 4


@torch.inference_mode()
def test_code_predictor_frame_cache_equals_a_slot_cache(ours):
    """predict_frame over its FrameKVCache (rows in lockstep, batch row b in row b) and over a
    slot KVCache (rows at other slots, as before): the same codes and embeddings."""
    g = torch.Generator().manual_seed(3)
    last_hidden = torch.randn(3, ours.config.hidden_size, generator=g)
    first_codes = torch.tensor([1, 7, 12])

    def greedy(group, logits):
        return logits.argmax(-1)

    groups = ours.talker_config.num_code_groups
    frame = ours.predict_frame(last_hidden, first_codes, ours.make_predictor_cache(4), torch.tensor([3, 0, 2]), greedy)
    slot = ours.predict_frame(last_hidden, first_codes, ours.code_predictor.make_cache(4, groups),
                              torch.tensor([3, 0, 2]), greedy)
    assert torch.equal(frame[0], slot[0]) and len(set(frame[0][:, 1].tolist())) > 1
    torch.testing.assert_close(frame[1], slot[1])
    with pytest.raises(ValueError, match="do not fit"):
        ours.predict_frame(last_hidden, first_codes, ours.make_predictor_cache(2), torch.tensor([0, 1, 2]), greedy)


def test_voices_come_from_the_checkpoint_in_any_case(tiny):
    config = Qwen3OmniTalkerConfig.from_dict(tiny.model.config.to_dict())
    assert config.speaker("Chelsie") == config.speaker("chelsie") == 46
    assert config.speaker("Ethan") == 47
    with pytest.raises(ValueError, match="unknown voice"):
        config.speaker("nobody")


def test_every_talker_key_is_consumed(tiny, tmp_path):
    tensors = load_prefixed_tensors(tiny.directory, TALKER_PREFIX)
    assert any(".mlp.shared_expert_gate." in key for key in tensors)
    assert any(key.startswith("code_predictor.lm_head.") for key in tensors)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny.directory / "config.json").read_text())
    tensors = {TALKER_PREFIX + k: v for k, v in tensors.items() if k != "code_predictor.lm_head.2.weight"}
    save_file({**tensors, "talker.extra.weight": torch.zeros(1)}, broken / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match="lm_head.2.weight"):
        load_qwen3_omni_talker(broken, dtype=torch.float32)
