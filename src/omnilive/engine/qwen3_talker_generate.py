"""Codec-frame generation with the Qwen3-Omni talker over our KV caches.

One request's state is a `Qwen3TalkerStream`: `start_qwen3_talker_stream` runs its prefill and
picks the first code of its first frame; each `qwen3_talker_step` then, for every given stream
at once, writes the rest of its pending frame with the code predictor (one batched forward per
residual code), feeds the frame's summed code embeddings plus its next text input to the
talker (one batched decode step) and picks the next frame's first code.

Token choice follows the reference generate: the first code gets the repetition penalty (over
the first codes chosen so far), everything from the codebook size up is suppressed but codec
EOS, then temperature → top-k → top-p; the residual codes their own top-k / top-p. Generation
ends at codec EOS (not part of the output) or after `max_new_tokens` first codes (the last
one, EOS or not, makes no frame).
Each row draws only from its own generator, so a seeded stream gives the same codes alone or
batched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from omnilive.engine.sampling import SamplingRow, make_generator, sample
from omnilive.model.kv_cache import KVCache
from omnilive.model.qwen3_omni_talker import Qwen3OmniTalker, Qwen3TalkerPrefill
from omnilive.model.talker import TalkerTextInputs
from omnilive.types import SamplingParams

# Qwen3OmniMoeForConditionalGeneration.generate's talker defaults, and its code predictor's
QWEN3_TALKER_SAMPLING = SamplingParams(temperature=0.9, top_k=50, top_p=1.0, repetition_penalty=1.05)
QWEN3_PREDICTOR_SAMPLING = SamplingParams(temperature=1.0, top_k=50, top_p=0.8)
QWEN3_TALKER_GREEDY = dataclasses.replace(QWEN3_TALKER_SAMPLING, temperature=0.0)  # the penalty stays
QWEN3_PREDICTOR_GREEDY = dataclasses.replace(QWEN3_PREDICTOR_SAMPLING, temperature=0.0)
QWEN3_TALKER_MAX_NEW_TOKENS = 4096


@dataclass
class Qwen3TalkerStream:
    """The talker state of one request."""

    slot: int  # its row in the talker cache and in the code predictor's
    text_inputs: TalkerTextInputs
    params: SamplingParams
    predictor_params: SamplingParams
    generator: torch.Generator
    cache_position: int
    rope_position: int
    max_new_tokens: int
    first_codes: list[int] = field(default_factory=list)  # every first code chosen (repetition penalty)
    last_hidden: torch.Tensor | None = None  # [H] the talker state that chose the pending first code
    frames: list[list[int]] = field(default_factory=list)  # complete frames, G codes each
    finished: bool = False

    @property
    def ready(self) -> bool:
        """Whether `qwen3_talker_step` can advance this stream now."""
        return not self.finished and self.text_inputs.ready()


@torch.inference_mode()
def start_qwen3_talker_stream(
    talker: Qwen3OmniTalker, prefill: Qwen3TalkerPrefill, text_inputs: TalkerTextInputs, cache: KVCache, slot: int,
    sampling: SamplingParams = QWEN3_TALKER_SAMPLING, predictor_sampling: SamplingParams = QWEN3_PREDICTOR_SAMPLING,
    seed: int | None = None, max_new_tokens: int = QWEN3_TALKER_MAX_NEW_TOKENS,
) -> Qwen3TalkerStream:
    """Prefill a request into `slot` and pick its first frame's first code."""
    stream = Qwen3TalkerStream(slot, text_inputs, sampling, predictor_sampling, make_generator(seed),
                               cache_position=prefill.length, rope_position=prefill.next_rope_position,
                               max_new_tokens=max_new_tokens)
    device = talker.device
    hidden = talker(None, torch.arange(prefill.length, device=device)[None], cache,
                    torch.tensor([slot], device=device), inputs_embeds=prefill.inputs_embeds[None],
                    rope_positions=prefill.rope_positions[:, None])
    _choose_first_codes(talker, [stream], hidden[:, -1])
    return stream


@torch.inference_mode()
def qwen3_talker_step(talker: Qwen3OmniTalker, streams: list[Qwen3TalkerStream], cache: KVCache,
                      predictor_cache: KVCache) -> list[list[int]]:
    """Complete each stream's pending frame and choose the next one's first code.

    Returns each stream's completed frame ([G] codes). A stream whose next first code is codec
    EOS (or that reached max_new_tokens) is `finished` after this step."""
    if not all(stream.ready for stream in streams):
        raise RuntimeError("qwen3_talker_step got a stream that is finished or waits for the thinker")
    device = talker.device
    slots = torch.tensor([stream.slot for stream in streams], device=device)
    rows = [SamplingRow(stream.predictor_params, stream.generator, ()) for stream in streams]

    def choose(group: int, logits: torch.Tensor) -> torch.Tensor:
        return torch.tensor([choice.token_id for choice in sample(logits, rows)], device=device)

    codes, codec_inputs = talker.predict_frame(
        torch.stack([stream.last_hidden for stream in streams]),
        torch.tensor([stream.first_codes[-1] for stream in streams], device=device),
        predictor_cache, slots, choose)
    text = torch.stack([stream.text_inputs.pop() for stream in streams]).to(device, talker.dtype)
    rope = torch.tensor([[stream.rope_position] for stream in streams], device=device)
    hidden = talker(None, torch.tensor([[stream.cache_position] for stream in streams], device=device), cache,
                    slots, inputs_embeds=(codec_inputs + text)[:, None], rope_positions=rope.expand(3, -1, 1))
    frames = codes.tolist()
    for stream, frame in zip(streams, frames):
        stream.frames.append(frame)
        stream.cache_position += 1
        stream.rope_position += 1
    _choose_first_codes(talker, streams, hidden[:, -1])
    return frames


def _choose_first_codes(talker: Qwen3OmniTalker, streams: list[Qwen3TalkerStream], hidden: torch.Tensor) -> None:
    """Each stream's next first code from the talker's final hidden states [B, H]."""
    config = talker.talker_config
    logits = talker.compute_logits(hidden).clone()
    eos = logits[:, config.codec_eos_token_id].clone()
    logits[:, config.codebook_size:] = float("-inf")  # control tokens carry no sound
    logits[:, config.codec_eos_token_id] = eos
    rows = [SamplingRow(stream.params, stream.generator, stream.first_codes) for stream in streams]
    for stream, choice, state in zip(streams, sample(logits, rows), hidden):
        stream.first_codes.append(choice.token_id)
        stream.last_hidden = state
        # at the limit the pending first code is dropped, as the reference never completes it
        stream.finished = (choice.token_id == config.codec_eos_token_id
                           or len(stream.first_codes) >= stream.max_new_tokens)


__all__ = [
    "QWEN3_PREDICTOR_GREEDY",
    "QWEN3_PREDICTOR_SAMPLING",
    "QWEN3_TALKER_GREEDY",
    "QWEN3_TALKER_MAX_NEW_TOKENS",
    "QWEN3_TALKER_SAMPLING",
    "Qwen3TalkerStream",
    "qwen3_talker_step",
    "start_qwen3_talker_stream",
]
