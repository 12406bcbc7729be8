"""Whole-utterance speech with a Qwen2.5-Omni checkpoint: what /v1/audio/speech uses.

    text to say ──tokenised──▶ prompt + reply ids through the thinker as ONE prefill (the
        talker gets exactly the hidden states generating those tokens would have given)
    ──talker──▶ codec tokens ──token2wav (one solve over the whole utterance)──▶ 24 kHz waveform

Chat replies are spoken while they are written, by the engine's speech stage
(engine/speech_stage.py); this path dictates the reply instead of sampling it, and is the
float32 reference the streamed speech is tested against (`speak` on a finished reply).
Its single-slot thinker cache is allocated on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from omnilive.backends.native_prompt import OmniPrompt
from omnilive.backends.registry import OmniModel
from omnilive.engine.speech import SpeechSettings
from omnilive.engine.talker_generate import start_talker_stream, talker_step
from omnilive.model.kv_cache import KVCache
from omnilive.model.rope_index import PromptPositions
from omnilive.model.talker import build_talker_inputs
from omnilive.model.thinker import ThinkerPrompt
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.types import EngineError, FinishReason


@dataclass
class ThinkerReply:
    """A finished thinker reply with what the talker needs to speak it."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    prompt: ThinkerPrompt
    prompt_hidden: torch.Tensor | None  # [T, H] final hidden states of the prompt
    reply_embeds: list[torch.Tensor]  # [H] thinker embedding of each reply token fed back
    reply_hidden: list[torch.Tensor]  # [H] its final hidden state


class WholeSpeech:
    def __init__(self, model: OmniModel, settings: SpeechSettings, context_length: int,
                 prefill_chunk_tokens: int = 256):
        """settings: the engine's speech settings (ODE steps, talker sampling and limits);
        streaming-only options (schedule, first-chunk steps, DiT dtype) do not apply here."""
        self.model, self.settings = model, settings
        self.context_length = min(context_length, model.thinker.config.max_position_embeddings)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._slot = torch.tensor([0], device=model.thinker.device)

    @cached_property
    def cache(self) -> KVCache:
        return self.model.thinker.make_cache(1, self.context_length)

    def _prefill(self, prepared: ThinkerPrompt) -> torch.Tensor:
        """Run the prompt into the cache in chunks; its final hidden states [T, H]."""
        kept = []
        for start in range(0, len(prepared), self.prefill_chunk_tokens):
            end = min(start + self.prefill_chunk_tokens, len(prepared))
            kept.append(self.model.thinker(cache=self.cache, slots=self._slot, **prepared.prefill_inputs(start, end))[0])
        return torch.cat(kept)

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
        s = self.settings
        cache = talker.make_cache(max_slots=1, max_len=prefill.length + s.talker_max_new_tokens)
        stream = start_talker_stream(talker, prefill, text_inputs, cache, 0, s.talker_sampling, seed,
                                     s.talker_max_new_tokens, s.speech_vocab_size)
        while not stream.finished and not cancelled():
            talker_step(talker, [stream], cache)
        return stream.codes

    def speech_codes(self, codes: Sequence[int]) -> list[int]:
        """The codes token2wav can voice (all of them for codes our talker chose)."""
        return [code for code in codes if code < self.settings.speech_vocab_size]

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
                                   num_steps=self.settings.token2wav_steps, initial_noise=noise)
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
        hidden = self._prefill(whole)
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
