"""Our Qwen2.5-Omni talker against transformers' (tiny random checkpoint, float32).

The reference end to end is Qwen2_5OmniForConditionalGeneration.generate: we capture what
its thinker produced, what its talker was fed (the input of `thinker_to_talker_proj` and the
position ids of every step) and the codec tokens it generated, then build our talker inputs
from the same thinker outputs and compare.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pytest
import torch

from omnilive.model.talker import (
    Talker,
    TalkerConfig,
    TalkerPrefill,
    TalkerTextInputs,
    build_talker_inputs,
    load_talker,
    talker_weights,
)
from omnilive.engine.talker_generate import (
    TALKER_GREEDY,
    TALKER_MAX_NEW_TOKENS,
    TALKER_SAMPLING,
    choose_codec_tokens,
    decode_logits,
    prefill_logits,
    start_talker_stream,
    talker_step,
)
from omnilive.model.kv_cache import KVCache
from omnilive.model.weights import WeightsMismatchError, load_state_dict_strict
from omnilive.types import SamplingParams
from tests.model.omni_tiny import (
    CODEC_TOKENS,
    TOKENS,
    VOICE_BOS_TOKENS,
    build_tiny_omni,
)

pytest.importorskip("transformers")

TOLERANCE = 1e-4
MAX_CODES = 40
IMAGE_GRID = (1, 4, 4)  # 16 patches of 14 x 14 → 4 image tokens after the 2 x 2 merge


def generate_codec_tokens(
    talker: Talker,
    prefill: TalkerPrefill,
    text_inputs: TalkerTextInputs,
    sampling: SamplingParams = TALKER_SAMPLING,
    seed: int | None = None,
    max_new_tokens: int = TALKER_MAX_NEW_TOKENS,
    cache: KVCache | None = None,
    slot: int = 0,
) -> list[int]:
    """All speech codes of one request whose thinker reply has finished (`text_inputs`
    finished), end token excluded: what token2wav consumes."""
    if not text_inputs.finished:
        raise ValueError("generate_codec_tokens needs the whole thinker reply: call text_inputs.finish()")
    if cache is None:
        cache = talker.make_cache(max_slots=slot + 1, max_len=prefill.length + max_new_tokens)
    stream = start_talker_stream(talker, prefill, text_inputs, cache, slot, sampling, seed, max_new_tokens)
    while not stream.finished:
        talker_step(talker, [stream], cache)
    return stream.codes



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tiny = build_tiny_omni(tmp_path_factory.mktemp("omni"))
    tiny.model.load_speakers(tiny.directory / "spk_dict.pt")
    return tiny


@pytest.fixture(scope="module")
def ours(tiny) -> Talker:
    return load_talker(tiny.directory, dtype=torch.float32)


class StopAfterTalker(Exception):
    """Raised once the reference talker has generated: token2wav is not under test."""


@dataclass
class ReferenceRun:
    thinker_result: object  # GenerateDecoderOnlyOutput with hidden states
    projector_inputs: list[torch.Tensor]  # what thinker_to_talker_proj got, each step [1, t, E]
    position_ids: list[torch.Tensor]  # [3, 1, t] each step
    codes: list[int]  # generated codec tokens before the first end token
    ended: bool  # whether it stopped on an end token


def run_reference(model, input_ids: torch.Tensor, **media) -> ReferenceRun:
    """Qwen2_5OmniForConditionalGeneration.generate (greedy talker), instrumented.

    transformers 5.23's generate drops an all-ones attention mask before the talker's forward,
    and without one the talker skips its codec pad/bos embeddings and M-RoPE positions (the
    path every padded batch takes, and the only one transformers 4.x and the original Qwen
    code take). We pass the all-ones mask back so the reference runs its intended path.
    """
    talker = model.talker
    captured: dict = {"proj": [], "positions": []}
    hooks = [
        talker.thinker_to_talker_proj.register_forward_pre_hook(lambda m, args: captured["proj"].append(args[0].clone())),
        talker.model.register_forward_pre_hook(
            lambda m, args, kwargs: captured["positions"].append(kwargs["position_ids"].clone()), with_kwargs=True
        ),
    ]
    forward, thinker_generate, talker_generate = talker.forward, model.thinker.generate, talker.generate

    @functools.wraps(forward)
    def forward_with_mask(*args, attention_mask=None, **kwargs):
        if attention_mask is None:
            cache = kwargs.get("past_key_values")
            step = kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
            seen = cache.get_seq_length() if cache is not None else 0
            attention_mask = torch.ones(step.shape[0], seen + step.shape[1], dtype=torch.long)
        return forward(*args, attention_mask=attention_mask, **kwargs)

    def keep_thinker_result(*args, **kwargs):
        captured["thinker"] = thinker_generate(*args, **kwargs)
        return captured["thinker"]

    def keep_codes_and_stop(*args, **kwargs):
        captured["sequences"] = talker_generate(*args, **kwargs)
        captured["prompt_length"] = kwargs["input_ids"].shape[1]
        raise StopAfterTalker

    talker.forward, model.thinker.generate, talker.generate = forward_with_mask, keep_thinker_result, keep_codes_and_stop
    try:
        model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), speaker="Ethan",
            thinker_max_new_tokens=6, thinker_do_sample=False,
            talker_do_sample=False, talker_max_new_tokens=MAX_CODES,
            talker_eos_token_id=[CODEC_TOKENS["tts_codec_pad_token_id"], CODEC_TOKENS["tts_codec_end_token_id"]],
            **media,
        )
    except StopAfterTalker:
        pass
    finally:
        del talker.forward, model.thinker.generate, talker.generate  # back to the class methods
        for hook in hooks:
            hook.remove()
    generated = captured["sequences"][0, captured["prompt_length"]:].tolist()
    ends = [i for i, code in enumerate(generated) if code in (CODEC_TOKENS["tts_codec_pad_token_id"],
                                                              CODEC_TOKENS["tts_codec_end_token_id"])]
    codes = generated[: ends[0]] if ends else generated
    return ReferenceRun(captured["thinker"], captured["proj"], captured["positions"], codes, bool(ends))


def our_inputs_from(model, ours: Talker, input_ids: torch.Tensor, run: ReferenceRun, **media):
    """Our talker prefill + text inputs, built from the reference thinker's outputs."""
    steps = run.thinker_result.hidden_states  # per step: (input embeddings, layer 1, ..., final normed)
    prompt_rope_positions = None
    if "image_grid_thw" in media:
        prompt_rope_positions, _ = model.thinker.get_rope_index(input_ids, media["image_grid_thw"], None,
                                                                torch.ones_like(input_ids))
        prompt_rope_positions = prompt_rope_positions[:, 0]
    return build_talker_inputs(
        ours,
        model.thinker.get_input_embeddings(),
        prompt_ids=input_ids[0],
        prompt_embeds=steps[0][0][0],
        prompt_hidden=steps[0][-1][0],
        reply_embeds=torch.cat([step[0][0] for step in steps[1:]]),
        reply_hidden=torch.cat([step[-1][0] for step in steps[1:]]),
        voice_bos_token=VOICE_BOS_TOKENS["Ethan"],
        prompt_rope_positions=prompt_rope_positions,
    )


def text_prompt(seed: int) -> tuple[torch.Tensor, dict]:
    return torch.randint(0, 120, (1, 9), generator=torch.Generator().manual_seed(seed)), {}


def image_prompt(seed: int) -> tuple[torch.Tensor, dict]:
    t, h, w = IMAGE_GRID
    ids = [5, 17, TOKENS["vision_start_token_id"]] + [TOKENS["image_token_index"]] * (t * h * w // 4)
    ids += [TOKENS["vision_end_token_id"], 31, 64, 7]
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=generator)
    # thinker_ prefix: generate passes un-prefixed media to the talker too, whose generate rejects them
    return torch.tensor([ids]), {"thinker_pixel_values": pixel_values, "image_grid_thw": torch.tensor([IMAGE_GRID])}


@pytest.mark.parametrize(
    "prompt", [text_prompt(6), text_prompt(1), image_prompt(2)], ids=["text-ends", "text-long", "image"]
)
def test_inputs_positions_and_greedy_codes_match_reference_generate(tiny, ours, prompt):
    input_ids, media = prompt
    run = run_reference(tiny.model, input_ids, **media)
    assert run.ended or len(run.codes) >= 32, "the case must cover 32 codes or an end token"

    prefill, text_inputs = our_inputs_from(tiny.model, ours, input_ids, run, **media)
    our_projector_inputs, our_positions = [], []
    hooks = [
        ours.thinker_to_talker_proj.register_forward_pre_hook(lambda m, args: our_projector_inputs.append(args[0])),
        ours.register_forward_pre_hook(lambda m, args: our_positions.append(args[1])),
    ]
    try:
        codes = generate_codec_tokens(ours, prefill, text_inputs, TALKER_GREEDY, max_new_tokens=MAX_CODES)
    finally:
        for hook in hooks:
            hook.remove()

    assert codes == run.codes
    # every step's input, the prefill's above all, equals what the reference talker was fed
    assert len(our_projector_inputs) == len(run.projector_inputs)
    for step, (mine, theirs) in enumerate(zip(our_projector_inputs, run.projector_inputs)):
        assert torch.allclose(mine, theirs, atol=1e-6, rtol=0), f"talker input of step {step} differs"
        assert torch.equal(our_positions[step], run.position_ids[step]), f"positions of step {step} differ"
    if media:  # M-RoPE: the image's tokens share temporal positions, the axes differ
        assert not torch.equal(run.position_ids[0][0], run.position_ids[0][1])


def test_logits_match_reference_talker(tiny, ours):
    reference = tiny.model.talker
    generator = torch.Generator().manual_seed(3)
    B, T, E = 2, 11, ours.talker_config.embedding_size
    inputs_embeds = torch.randn(B, T, E, generator=generator)
    # three different position axes, so every M-RoPE section is checked
    rope_positions = torch.stack([torch.arange(T).expand(B, T) + offset for offset in (0, 3, 7)])
    rope_positions[1, 1] = torch.randint(0, 20, (T,), generator=generator)
    with torch.no_grad():
        expected = reference(inputs_embeds=inputs_embeds.clone(), position_ids=rope_positions).logits
        cache = ours.make_cache(max_slots=B, max_len=T)
        hidden = ours(inputs_embeds, rope_positions, torch.arange(T).expand(B, T), cache, torch.arange(B))
        actual = ours.compute_logits(hidden)
    assert (actual - expected).abs().max().item() <= TOLERANCE


def random_talker_inputs(tiny, ours: Talker, seed: int, prompt_length: int, reply_length: int):
    """Talker inputs from made-up thinker outputs, with M-RoPE prompt positions."""
    generator = torch.Generator().manual_seed(seed)
    E = ours.talker_config.embedding_size
    rope_positions = torch.arange(prompt_length).expand(3, -1).clone()
    rope_positions[1:, 2:5] = torch.tensor([[2, 2, 3], [2, 3, 3]])  # a 'media' stretch
    return build_talker_inputs(
        ours,
        tiny.model.thinker.get_input_embeddings(),
        prompt_ids=torch.randint(0, 120, (prompt_length,), generator=generator),
        prompt_embeds=torch.randn(prompt_length, E, generator=generator),
        prompt_hidden=torch.randn(prompt_length, E, generator=generator),
        reply_embeds=torch.randn(reply_length, E, generator=generator),
        reply_hidden=torch.randn(reply_length, E, generator=generator),
        voice_bos_token=VOICE_BOS_TOKENS["Chelsie"],
        prompt_rope_positions=rope_positions,
    )


def test_cached_decode_equals_one_pass_without_cache(tiny, ours):
    prefill, text_inputs = random_talker_inputs(tiny, ours, seed=5, prompt_length=8, reply_length=3)
    codes = [3, 9, 9, 1, 14, 0, 7]
    step_inputs = [text_inputs.pop() for _ in codes]  # reply tokens 1, 2, then text EOS, then PAD
    L, n = prefill.length, len(codes)
    with torch.no_grad():
        cache = ours.make_cache(max_slots=2, max_len=L + n)  # slot 1: a slot other than 0 works
        stepwise = [prefill_logits(ours, prefill, cache, slot=1)]
        for k, (code, text) in enumerate(zip(codes, step_inputs)):
            stepwise.append(decode_logits(
                ours, torch.tensor([code]), text[None], torch.tensor([prefill.next_rope_position + k]),
                torch.tensor([L + k]), cache, torch.tensor([1]),
            )[0])
        # the same sequence in one pass over an empty cache
        decode_inputs = ours.embed_codec(torch.tensor(codes)) + torch.stack(step_inputs)
        inputs_embeds = torch.cat([prefill.inputs_embeds, decode_inputs])[None]  # [1, L + n, E]
        decode_positions = (torch.arange(n) + prefill.next_rope_position).expand(3, -1)
        rope_positions = torch.cat([prefill.rope_positions, decode_positions], dim=1)[:, None]  # [3, 1, L + n]
        fresh = ours.make_cache(max_slots=1, max_len=L + n)
        hidden = ours(inputs_embeds, rope_positions, torch.arange(L + n)[None], fresh, torch.tensor([0]))
        one_pass = ours.compute_logits(hidden[0, L - 1:])
    assert (torch.stack(stepwise) - one_pass).abs().max().item() <= 1e-5


def test_batched_streams_equal_single_runs(tiny, ours):
    # (seed, prompt length, reply length): rows of different lengths; the first ends early
    cases = [(3, 9, 4), (6, 5, 2)]
    singles = [
        generate_codec_tokens(ours, *random_talker_inputs(tiny, ours, *case), TALKER_GREEDY, max_new_tokens=12)
        for case in cases
    ]
    assert 3 < len(singles[0]) < 12 and len(singles[1]) == 12
    cache = ours.make_cache(max_slots=2, max_len=9 + 2 + 12)
    streams = [
        start_talker_stream(ours, *random_talker_inputs(tiny, ours, *case), cache, slot=slot,
                            sampling=TALKER_GREEDY, max_new_tokens=12)
        for slot, case in enumerate(cases)
    ]
    while any(stream.ready for stream in streams):
        talker_step(ours, [stream for stream in streams if stream.ready], cache)
    assert [stream.codes for stream in streams] == singles


def test_text_inputs_wait_for_the_thinker_then_end_with_eos_and_pad():
    eos, pad = torch.full((4,), -1.0), torch.full((4,), -2.0)
    text = TalkerTextInputs(eos, pad)
    assert not text.ready()
    with pytest.raises(RuntimeError, match="ran ahead"):
        text.pop()
    text.push(torch.ones(4))
    assert text.ready() and torch.equal(text.pop(), torch.ones(4))
    text.finish()
    with pytest.raises(RuntimeError):
        text.push(torch.ones(4))
    assert [text.pop()[0].item() for _ in range(4)] == [-1.0, -2.0, -2.0, -2.0]


def test_codec_bos_is_never_chosen(ours):
    from omnilive.engine.sampling import SamplingRow, make_generator

    bos = ours.talker_config.tts_codec_start_token_id
    logits = torch.zeros(1, ours.talker_config.vocab_size)
    logits[0, bos], logits[0, 5] = 50.0, 1.0
    row = SamplingRow(TALKER_GREEDY, make_generator(0), [])
    assert choose_codec_tokens(ours, logits, [row]) == [5]


def test_config_reads_checkpoint_json(tiny):
    raw = json.loads((tiny.directory / "config.json").read_text())
    config = TalkerConfig.from_dict(raw)
    assert config.mrope_section == (2, 2, 2) and config.embedding_size == 64 and config.rope_theta == 10000.0
    assert config.codec_eos_token_ids == (CODEC_TOKENS["tts_codec_pad_token_id"], CODEC_TOKENS["tts_codec_end_token_id"])
    # the hub config.json spells rope settings the transformers 4 way
    legacy = dict(raw["talker_config"], rope_theta=500.0, rope_scaling={"type": "default", "mrope_section": [1, 2, 3]})
    legacy.pop("rope_parameters")
    config = TalkerConfig.from_dict(legacy)
    assert config.mrope_section == (1, 2, 3) and config.rope_theta == 500.0


def test_checkpoint_mismatch_is_a_clear_error(tiny):
    config = TalkerConfig.from_dict(tiny.model.config.talker_config.to_dict())
    weights = talker_weights({f"talker.{k}": v for k, v in tiny.model.talker.state_dict().items()})
    load_state_dict_strict(Talker(config), weights)  # the full set loads

    missing = {k: v for k, v in weights.items() if k != "codec_head.weight"}
    with pytest.raises(WeightsMismatchError, match=r"missing keys: codec_head\.weight"):
        load_state_dict_strict(Talker(config), missing)
    extra = dict(weights, **{"model.layers.9.mlp.up_proj.weight": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys: model\.layers\.9\.mlp\.up_proj\.weight"):
        load_state_dict_strict(Talker(config), extra)
    misshaped = dict(weights, **{"thinker_to_talker_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(WeightsMismatchError, match=r"shape mismatch: thinker_to_talker_proj\.weight"):
        load_state_dict_strict(Talker(config), misshaped)
