"""One Qwen2.5-Omni reply start to end on the calling thread, whole: thinker → talker → token2wav.

    prompt ids + media ──thinker prefill (chunks)──▶ first token
    each token ──sample, detokenise, emit TextDelta──▶ fed back (decode step, rotary id
                 = cache position + the prompt's rope delta) until a stop token or the limit
    speech of the finished reply (`speak`): its hidden states ──talker──▶ codec tokens
            ──token2wav (one solve over the whole utterance)──▶ 24 kHz waveform

Served requests stream through the batched loop (native_batch.OmniBatch), which reads its
settings and token helpers from an OmniRunner; this whole-reply path is what /v1/audio/speech
(`speak_text`) uses and what the streamed output is tested against. Its single-slot thinker
cache is allocated on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from omnilive.backends.native_prompt import OmniProcessor, OmniPrompt
from omnilive.backends.native_speech import QuickStartSchedule, SpeechSettings
from omnilive.engine.detokenizer import Detokenizer
from omnilive.model.kv_cache import KVCache
from omnilive.engine.sampling import SamplingRow, TokenSample, make_generator, sample
from omnilive.types import (
    EngineError,
    EngineOutput,
    FinishReason,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from omnilive.model.rope_index import PromptPositions
from omnilive.model.talker import Talker, build_talker_inputs
from omnilive.engine.talker_generate import (
    TALKER_MAX_NEW_TOKENS,
    TALKER_SAMPLING,
    start_talker_stream,
    talker_step,
)
from omnilive.model.thinker import OmniThinker, ThinkerPrompt
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.model.token2wav_stream import StreamingSchedule
from omnilive.model.tokenizer import Tokenizer

TOKEN2WAV_STEPS = 10  # the reference's ODE steps
# Qwen's own streaming windows (3 blocks, 2 back, 1 ahead) after a 2-block first one
SPEECH_SCHEDULE = QuickStartSchedule(first_chunk_blocks=2)


@dataclass
class OmniModel:
    """A loaded Qwen2.5-Omni checkpoint (see native_omni.load_omni)."""

    thinker: OmniThinker
    tokenizer: Tokenizer
    processor: OmniProcessor
    talker: Talker | None = None  # None: the checkpoint cannot speak
    token2wav: Token2Wav | None = None
    voices: dict[str, Voice] = field(default_factory=dict)
    family: str = "Qwen2.5-Omni"  # what the model card calls it


@dataclass
class ThinkerReply:
    """What the thinker pass leaves behind: the reply, and (when speaking) the talker's inputs."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    prompt: ThinkerPrompt
    prompt_hidden: torch.Tensor | None  # [T, H] final hidden states of the prompt
    reply_embeds: list[torch.Tensor]  # [H] thinker embedding of each reply token fed back
    reply_hidden: list[torch.Tensor]  # [H] its final hidden state


class OmniRunner:
    def __init__(self, model: OmniModel, context_length: int, prefill_chunk_tokens: int = 256,
                 token2wav_steps: int = TOKEN2WAV_STEPS, talker_sampling: SamplingParams = TALKER_SAMPLING,
                 speech_schedule: StreamingSchedule = SPEECH_SCHEDULE,
                 talker_max_new_tokens: int = TALKER_MAX_NEW_TOKENS, first_chunk_steps: int | None = None,
                 speech_dtype: torch.dtype = torch.float32):
        """talker_max_new_tokens: codec tokens one reply may have (fewer where token2wav cannot
        place them). speech_schedule: token2wav's streaming windows (StreamingSchedule.exact(...) makes the
        streamed speech equal the whole-reply synthesis, at the cost of a later first chunk).
        first_chunk_steps, speech_dtype: lossy options of streamed speech only (fewer ODE steps
        for the first window; bfloat16 DiT); the whole-reply path stays the float32 reference."""
        self.model = model
        self.context_length = min(context_length, model.thinker.config.max_position_embeddings)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.token2wav_steps = token2wav_steps
        self.talker_sampling = talker_sampling
        self.speech_schedule = speech_schedule
        self._talker_max_new_tokens = talker_max_new_tokens
        self.first_chunk_steps, self.speech_dtype = first_chunk_steps, speech_dtype
        self._slot = torch.tensor([0], device=model.thinker.device)

    @cached_property
    def cache(self) -> KVCache:
        return self.model.thinker.make_cache(1, self.context_length)

    # the thinker

    @torch.inference_mode()
    def think(self, prompt: OmniPrompt, sampling: SamplingParams, emit: Callable[[EngineOutput], None],
              cancelled: Callable[[], bool], keep_hidden: bool = False) -> ThinkerReply:
        """The thinker's reply, its TextDeltas emitted as they come. keep_hidden: keep what the
        talker needs in the reply (whole-reply speech)."""
        thinker, tokenizer = self.model.thinker, self.model.tokenizer
        prepared = thinker.prepare_prompt(prompt.input_ids, prompt.media)
        max_new = min(sampling.max_tokens or self.context_length, self.context_length - len(prepared))
        reply = ThinkerReply([], "", "length", prepared, None, [], [])
        hidden = self._prefill(prepared, keep_hidden, cancelled)
        if hidden is None:
            reply.finish_reason = "abort"
            return reply
        reply.prompt_hidden = hidden if keep_hidden else None
        logits = thinker.compute_logits(hidden[None, -1])  # [1, V]
        row = SamplingRow(sampling, make_generator(sampling.seed), list(prompt.input_ids))
        detokenizer = Detokenizer(self.text_bytes, sampling.stop)
        while True:
            choice = sample(logits, [row])[0]
            token = choice.token_id
            reply.token_ids.append(token)
            row.seen_token_ids.append(token)
            if token in tokenizer.stop_token_ids:
                reply.finish_reason = "stop"
                break
            text = detokenizer.add_token(token, reasoning=False).content
            logprobs = (self.logprob(token, choice),) if choice.logprob is not None else ()
            if text or logprobs:
                reply.text += text
                emit(TextDelta(text, logprobs))
            if detokenizer.stopped or len(reply.token_ids) >= max_new or cancelled():
                reply.finish_reason = "abort" if cancelled() else "stop" if detokenizer.stopped else "length"
                break
            last = self._feed_back(prepared, token, len(reply.token_ids) - 1)  # [H]
            if keep_hidden:
                reply.reply_hidden.append(last)
                reply.reply_embeds.append(thinker.model.embed_tokens(torch.tensor(token, device=thinker.device)))
            logits = thinker.compute_logits(last[None])
        if reply.finish_reason != "abort" and (tail := detokenizer.finish().content):
            reply.text += tail
            emit(TextDelta(tail))
        return reply

    def _prefill(self, prepared: ThinkerPrompt, keep_hidden: bool, cancelled: Callable[[], bool]) -> torch.Tensor | None:
        """Run the prompt into the cache in chunks; its final hidden states [T or 1, H] (all
        of them when kept for the talker), or None when cancelled."""
        kept = []
        for start in range(0, len(prepared), self.prefill_chunk_tokens):
            if cancelled():
                return None
            end = min(start + self.prefill_chunk_tokens, len(prepared))
            hidden = self.model.thinker(cache=self.cache, slots=self._slot, **prepared.prefill_inputs(start, end))[0]
            kept.append(hidden if keep_hidden else hidden[-1:])
        return torch.cat(kept) if keep_hidden else kept[-1]

    def _feed_back(self, prepared: ThinkerPrompt, token: int, index: int) -> torch.Tensor:
        """Decode step for reply token `index`: text, so its three rotary ids are its cache
        position + the prompt's delta. Returns its final hidden state [H]."""
        device = self.model.thinker.device
        position = torch.tensor([[len(prepared) + index]], device=device)
        hidden = self.model.thinker(torch.tensor([[token]], device=device), position, self.cache, self._slot,
                                    rope_positions=position + prepared.rope_delta)
        return hidden[0, -1]

    def text_bytes(self, token_id: int) -> bytes:
        tokenizer = self.model.tokenizer
        return b"" if tokenizer.is_special(token_id) else tokenizer.token_bytes(token_id)

    def logprob(self, token_id: int, choice: TokenSample) -> TokenLogprob:
        def text_and_bytes(t: int) -> tuple[str, bytes]:
            data = self.model.tokenizer.token_bytes(t)
            return data.decode("utf-8", errors="replace"), data

        text, data = text_and_bytes(token_id)
        top = tuple((alt_text, lp, tuple(alt_data)) for t, lp in choice.top
                    for alt_text, alt_data in [text_and_bytes(t)])
        return TokenLogprob(token=text, logprob=float(choice.logprob), bytes=tuple(data), top=top)

    # speech

    @torch.inference_mode()
    def speak(self, reply: ThinkerReply, voice: Voice, seed: int | None = None,
              cancelled: Callable[[], bool] = lambda: False) -> np.ndarray | None:
        """24 kHz float32 speech of a finished reply; None when it has nothing to say (no
        reply token was fed back) or the request was cancelled."""
        codes = self.speech_codes(self.codec_tokens(reply, voice, seed, cancelled))
        if not codes or cancelled():
            return None
        return self.waveform(codes, voice, seed)

    def codec_tokens(self, reply: ThinkerReply, voice: Voice, seed: int | None = None,
                     cancelled: Callable[[], bool] = lambda: False) -> list[int]:
        talker, thinker = self.model.talker, self.model.thinker
        if talker is None:
            raise RuntimeError("this checkpoint has no talker")
        if not reply.reply_hidden or reply.prompt_hidden is None:
            return []
        bos = voice.bos_token if voice.bos_token is not None else talker.talker_config.tts_text_start_token_id
        prefill, text_inputs = build_talker_inputs(
            talker, thinker.model.embed_tokens, reply.prompt.input_ids, reply.prompt.embeds, reply.prompt_hidden,
            torch.stack(reply.reply_embeds), torch.stack(reply.reply_hidden), bos, reply.prompt.rope.positions,
        )
        cache = talker.make_cache(max_slots=1, max_len=prefill.length + self.talker_max_new_tokens)
        stream = start_talker_stream(talker, prefill, text_inputs, cache, 0, self.talker_sampling, seed,
                                     self.talker_max_new_tokens, self.speech_vocab_size)
        while not stream.finished and not cancelled():
            talker_step(talker, [stream], cache)
        return stream.codes

    @property
    def talker_max_new_tokens(self) -> int:
        """Codec tokens one reply may have (the end token included): the configured limit, or
        fewer where token2wav's DiT cannot place more mel frames."""
        dit = self.model.token2wav.code2wav_dit_model.config
        return min(self._talker_max_new_tokens, dit.max_position_embeddings // dit.repeats)

    @property
    def speech_settings(self) -> SpeechSettings:
        """How streamed speech is made (native_batch's SpeechStreams)."""
        return SpeechSettings(self.token2wav_steps, self.talker_sampling, self.speech_schedule,
                              self.talker_max_new_tokens, self.speech_vocab_size, self.first_chunk_steps,
                              self.speech_dtype)

    @property
    def speech_vocab_size(self) -> int:
        """Codes token2wav can voice (the DiT's code embeddings); the talker's control tokens
        above them (mask and the like) carry no sound, so the talker never picks them here."""
        return self.model.token2wav.code2wav_dit_model.text_embed.codec_embed.num_embeddings

    def speech_codes(self, codes: Sequence[int]) -> list[int]:
        """The codes token2wav can voice (all of them for codes this runner's talker chose)."""
        return [code for code in codes if code < self.speech_vocab_size]

    def waveform(self, codes: Sequence[int], voice: Voice, seed: int | None = None) -> np.ndarray:
        """codec tokens → 24 kHz float32 samples (codes × repeats × hop of them)."""
        token2wav = self.model.token2wav
        if token2wav is None:
            raise RuntimeError("this checkpoint has no token2wav")
        device = next(token2wav.parameters()).device
        noise = None
        if seed is not None:  # reproducible speech for a seeded request, the same noise streaming draws
            frames = len(codes) * token2wav.code2wav_dit_model.config.repeats
            noise = seeded_noise(token2wav, seed, frames)
        wav = token2wav.synthesize(torch.tensor([list(codes)], device=device), voice,
                                   num_steps=self.token2wav_steps, initial_noise=noise)
        return wav[0].float().cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def speak_text(self, prompt: OmniPrompt, text: str, voice: Voice, seed: int | None = None) -> np.ndarray | None:
        """Speech of a reply we dictate instead of sample: the prompt and the reply's tokens go
        through the thinker as one prefill, which gives the talker exactly the hidden states
        generating those tokens would have."""
        thinker = self.model.thinker
        reply_ids = self.model.tokenizer.encode(text)
        if not reply_ids:
            return None
        if len(prompt) + len(reply_ids) >= self.context_length:
            raise EngineError(f"{len(prompt) + len(reply_ids)} tokens do not fit the context of {self.context_length}",
                              param="input", code="context_length_exceeded")
        whole = thinker.prepare_prompt([*prompt.input_ids, *reply_ids], prompt.media)
        hidden = self._prefill(whole, keep_hidden=True, cancelled=lambda: False)
        n = len(prompt)
        prepared = ThinkerPrompt(whole.input_ids[:n], whole.embeds[:n], _truncated_positions(whole, n))
        reply = ThinkerReply(reply_ids, text, "stop", prepared, hidden[:n],
                             list(whole.embeds[n:]), list(hidden[n:]))
        return self.speak(reply, voice, seed)


def _truncated_positions(prompt: ThinkerPrompt, length: int) -> PromptPositions:
    """The rotary ids of the first `length` tokens (text follows, so the delta is unchanged)."""
    return PromptPositions(prompt.rope.positions[:, :length], prompt.rope.delta)


def seeded_noise(token2wav: Token2Wav, seed: int, frames: int) -> torch.Tensor:
    """[1, frames, mel] ODE start of a seeded utterance, drawn block by block as
    StreamingToken2Wav draws it, so streamed and whole speech start from the same noise."""
    config = token2wav.code2wav_dit_model.config
    device = next(token2wav.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    blocks = [torch.randn(1, config.block_size, config.mel_dim, generator=generator, device=device)
              for _ in range(-(-frames // config.block_size))]
    return torch.cat(blocks, dim=1)[:, :frames] if blocks else torch.zeros(1, 0, config.mel_dim, device=device)
