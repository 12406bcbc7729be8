"""Codec-token generation with the talker over our KV cache.

One request's talker state is a `TalkerStream`: `start_talker_stream` runs its prefill and
picks its first codec token; each `talker_step` then feeds every given stream its last codec
token plus its next text input (one batched decode step) and picks the next token. The engine
calls `talker_step` whenever a stream's text input is ready (the thinker runs ahead);
backends/native_speech.py runs one request to its end (whole-utterance speech).

Token choice follows the reference generate: the codec BOS token is suppressed, then the
engine's sampler applies repetition penalty (over the talker's input ids and its output so
far) → temperature → top-k → top-p. Generation ends at a codec pad or end token (not part of
the output) or after `max_new_tokens` tokens (the ending token included).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from omnilive.model.kv_cache import KVCache
from omnilive.engine.sampling import SamplingRow, make_generator, sample
from omnilive.types import SamplingParams
from omnilive.model.talker import Talker, TalkerPrefill, TalkerTextInputs

# Qwen2_5OmniForConditionalGeneration.generate's talker defaults
TALKER_SAMPLING = SamplingParams(temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.05)
TALKER_GREEDY = dataclasses.replace(TALKER_SAMPLING, temperature=0.0)  # do_sample=False: penalty stays
TALKER_MAX_NEW_TOKENS = 4096


@dataclass
class TalkerStream:
    """The talker state of one request."""

    slot: int  # its KV cache slot
    text_inputs: TalkerTextInputs
    params: SamplingParams
    generator: torch.Generator
    seen_codec_ids: list[int]  # the talker's input ids, then every generated token (repetition penalty)
    cache_position: int  # where the next token's key/value goes
    rope_position: int  # the next token's rotary position (all three axes)
    max_new_tokens: int
    speech_vocab_size: int | None = None  # codes token2wav can voice; None = any (as the reference)
    codes: list[int] = field(default_factory=list)  # the speech codes so far (no end token)
    num_generated: int = 0  # codes + the end token, once there is one
    finished: bool = False

    @property
    def sampling_row(self) -> SamplingRow:
        return SamplingRow(self.params, self.generator, self.seen_codec_ids)

    @property
    def ready(self) -> bool:
        """Whether `talker_step` can advance this stream now."""
        return not self.finished and self.text_inputs.ready()


def prefill_logits(talker: Talker, prefill: TalkerPrefill, cache: KVCache, slot: int) -> torch.Tensor:
    """Run one request's prefill into `slot`; codec logits [V] of its last position."""
    device = talker.device
    hidden = talker(
        prefill.inputs_embeds[None].to(device),  # [1, L, E]
        prefill.rope_positions[:, None].to(device),  # [3, 1, L]
        torch.arange(prefill.length, device=device)[None],  # [1, L]
        cache,
        torch.tensor([slot], device=device),
    )
    return talker.compute_logits(hidden[0, -1])


def decode_logits(
    talker: Talker,
    codec_ids: torch.Tensor,  # [B] the codec token each row feeds
    text_inputs: torch.Tensor,  # [B, E] the thinker-side input of each row
    rope_positions: torch.Tensor,  # [B]
    cache_positions: torch.Tensor,  # [B]
    cache: KVCache,
    slots: torch.Tensor,  # [B]
) -> torch.Tensor:
    """One decode step of B rows (one token each); codec logits [B, V]."""
    inputs = talker.embed_codec(codec_ids) + text_inputs.to(talker.dtype)  # [B, E]
    hidden = talker(
        inputs[:, None],  # [B, 1, E]
        rope_positions[None, :, None].expand(3, -1, 1),  # [3, B, 1]: text, all axes equal
        cache_positions[:, None],
        cache,
        slots,
    )
    return talker.compute_logits(hidden[:, -1])


def choose_codec_tokens(talker: Talker, logits: torch.Tensor, rows: list[SamplingRow],
                        speech_vocab_size: int | None = None) -> list[int]:
    """logits [B, V] → one codec token per row (codec BOS never chosen).

    speech_vocab_size: the codes token2wav can embed (its DiT's code-embedding rows). Given, every token
    at or above it is never chosen except the ones that end the speech: the talker's other
    control tokens (mask and the like) carry no sound and token2wav cannot take them. None
    keeps the reference's choice (its generate does not restrict them)."""
    config = talker.talker_config
    logits = logits.float().clone()
    if speech_vocab_size is not None and speech_vocab_size < logits.shape[-1]:
        ends = logits[:, list(config.codec_eos_token_ids)].clone()
        logits[:, speech_vocab_size:] = float("-inf")
        logits[:, list(config.codec_eos_token_ids)] = ends
    logits[:, config.tts_codec_start_token_id] = float("-inf")
    return [choice.token_id for choice in sample(logits, rows)]


def start_talker_stream(
    talker: Talker,
    prefill: TalkerPrefill,
    text_inputs: TalkerTextInputs,
    cache: KVCache,
    slot: int,
    sampling: SamplingParams = TALKER_SAMPLING,
    seed: int | None = None,
    max_new_tokens: int = TALKER_MAX_NEW_TOKENS,
    speech_vocab_size: int | None = None,
) -> TalkerStream:
    """Prefill a request and pick its first codec token (see choose_codec_tokens for
    speech_vocab_size)."""
    stream = TalkerStream(
        slot=slot,
        text_inputs=text_inputs,
        params=sampling,
        generator=make_generator(seed),
        seen_codec_ids=list(prefill.codec_ids),
        cache_position=prefill.length,
        rope_position=prefill.next_rope_position,
        max_new_tokens=max_new_tokens,
        speech_vocab_size=speech_vocab_size,
    )
    logits = prefill_logits(talker, prefill, cache, slot)
    _take(talker, stream, choose_codec_tokens(talker, logits[None], [stream.sampling_row], speech_vocab_size)[0])
    return stream


def talker_step(talker: Talker, streams: list[TalkerStream], cache: KVCache) -> list[int | None]:
    """Advance each stream by one codec token (one batched decode step).

    Returns each stream's new speech code, or None where it ended instead.
    """
    if not all(stream.ready for stream in streams):
        raise RuntimeError("talker_step got a stream that is finished or waits for the thinker")
    device = talker.device
    logits = decode_logits(
        talker,
        torch.tensor([stream.codes[-1] for stream in streams], device=device),
        torch.stack([stream.text_inputs.pop() for stream in streams]).to(device),
        torch.tensor([stream.rope_position for stream in streams], device=device),
        torch.tensor([stream.cache_position for stream in streams], device=device),
        cache,
        torch.tensor([stream.slot for stream in streams], device=device),
    )
    for stream in streams:
        stream.cache_position += 1
        stream.rope_position += 1
    tokens = [  # per row: streams may differ in what their token2wav can voice
        choose_codec_tokens(talker, logits[i:i + 1], [stream.sampling_row], stream.speech_vocab_size)[0]
        for i, stream in enumerate(streams)
    ]
    return [_take(talker, stream, token) for stream, token in zip(streams, tokens)]


def _take(talker: Talker, stream: TalkerStream, token: int) -> int | None:
    stream.num_generated += 1
    stream.seen_codec_ids.append(token)
    if token in talker.talker_config.codec_eos_token_ids:
        stream.finished = True
        return None
    stream.codes.append(token)
    stream.finished = stream.num_generated >= stream.max_new_tokens
    return token


__all__ = [
    "TALKER_GREEDY",
    "TALKER_MAX_NEW_TOKENS",
    "TALKER_SAMPLING",
    "TalkerStream",
    "choose_codec_tokens",
    "decode_logits",
    "prefill_logits",
    "start_talker_stream",
    "talker_step",
]
