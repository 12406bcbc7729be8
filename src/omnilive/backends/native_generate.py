"""One Qwen2.5-Omni request, start to end, on the calling thread: thinker → talker → token2wav.

    prompt ids + media ──thinker prefill (chunks)──▶ first token
    each token ──sample, detokenise, emit TextDelta──▶ fed back (decode step, rotary id
                 = cache position + the prompt's rope delta) until a stop token or the limit
    speech, interleaved with the thinker (SpeechStream): each reply token fed back
            ──its hidden state + embedding──▶ talker (prefill at reply token 0, then one
            decode step per token) ──codec token──▶ StreamingToken2Wav ──▶ AudioChunk as soon
            as a waveform chunk is final; after the thinker ends the talker runs on to its end

Requests run one at a time over a single-slot KV cache (the engine serialises them); the
thinker's cache is allocated once, the talker's per spoken reply. `cancelled()` is polled
between forward passes, so an abandoned request stops within one step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from omnilive.backends.native_prompt import OmniProcessor, OmniPrompt
from omnilive.engine.detokenizer import Detokenizer
from omnilive.engine.sampling import SamplingRow, TokenSample, make_generator, sample
from omnilive.engine.types import (
    AudioChunk,
    EngineError,
    EngineOutput,
    Finished,
    FinishReason,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Usage,
)
from omnilive.model.rope_index import PromptPositions
from omnilive.model.talker import (
    Talker,
    build_talker_inputs,
    build_talker_prefill,
    new_talker_text_inputs,
)
from omnilive.model.talker_generate import (
    TALKER_MAX_NEW_TOKENS,
    TALKER_SAMPLING,
    TalkerStream,
    start_talker_stream,
    talker_step,
)
from omnilive.model.thinker import OmniThinker, ThinkerPrompt
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.model.token2wav_stream import StreamingSchedule, StreamingToken2Wav
from omnilive.model.tokenizer import Tokenizer

TOKEN2WAV_STEPS = 10  # the reference's ODE steps
SPEECH_SCHEDULE = StreamingSchedule()  # Qwen's own streaming windows: 3 blocks, 2 back, 1 ahead


@dataclass
class OmniModel:
    """A loaded Qwen2.5-Omni checkpoint (see native_omni.load_omni)."""

    thinker: OmniThinker
    tokenizer: Tokenizer
    processor: OmniProcessor
    talker: Talker | None = None  # None: the checkpoint cannot speak
    token2wav: Token2Wav | None = None
    voices: dict[str, Voice] = field(default_factory=dict)


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
                 talker_max_new_tokens: int = TALKER_MAX_NEW_TOKENS):
        """talker_max_new_tokens: codec tokens one reply may have (fewer where token2wav cannot
        place them). speech_schedule: token2wav's streaming windows (StreamingSchedule.exact(...) makes the
        streamed speech equal the whole-reply synthesis, at the cost of a later first chunk)."""
        self.model = model
        self.context_length = min(context_length, model.thinker.config.max_position_embeddings)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.token2wav_steps = token2wav_steps
        self.talker_sampling = talker_sampling
        self.speech_schedule = speech_schedule
        self._talker_max_new_tokens = talker_max_new_tokens
        self.cache = model.thinker.make_cache(1, self.context_length)
        self._slot = torch.tensor([0], device=model.thinker.device)

    def run(self, prompt: OmniPrompt, sampling: SamplingParams, voice: Voice | None,
            emit: Callable[[EngineOutput], None], cancelled: Callable[[], bool] = lambda: False) -> None:
        """Generate one reply, emitting TextDeltas as tokens come and (with a voice) AudioChunks
        of its speech as soon as they are final, interleaved with the text; then Finished."""
        speech = SpeechStream(self, voice, sampling.seed, emit, cancelled) if voice is not None else None
        reply = self.think(prompt, sampling, speech.relay if speech else emit, cancelled, speech=speech)
        if speech is not None and reply.finish_reason != "abort":
            speech.finish()
        finish = "abort" if cancelled() else reply.finish_reason
        emit(Finished(finish, Usage(prompt_tokens=len(prompt), completion_tokens=len(reply.token_ids),
                                    audio_prompt_tokens=prompt.audio_tokens, image_prompt_tokens=prompt.image_tokens)))

    # the thinker

    @torch.inference_mode()
    def think(self, prompt: OmniPrompt, sampling: SamplingParams, emit: Callable[[EngineOutput], None],
              cancelled: Callable[[], bool], keep_hidden: bool = False,
              speech: SpeechStream | None = None) -> ThinkerReply:
        """The thinker's reply, its TextDeltas emitted as they come. keep_hidden: keep what the
        talker needs in the reply (whole-reply speech); speech: hand it to a SpeechStream as
        each reply token is fed back instead."""
        thinker, tokenizer = self.model.thinker, self.model.tokenizer
        prepared = thinker.prepare_prompt(prompt.input_ids, prompt.media)
        max_new = min(sampling.max_tokens or self.context_length, self.context_length - len(prepared))
        reply = ThinkerReply([], "", "length", prepared, None, [], [])
        hidden = self._prefill(prepared, keep_hidden or speech is not None, cancelled)
        if hidden is None:
            reply.finish_reason = "abort"
            return reply
        reply.prompt_hidden = hidden if keep_hidden else None
        if speech is not None:
            speech.start(prepared, hidden)
        logits = thinker.compute_logits(hidden[None, -1])  # [1, V]
        row = SamplingRow(sampling, make_generator(sampling.seed), list(prompt.input_ids))
        detokenizer = Detokenizer(self._text_bytes, sampling.stop)
        while True:
            choice = sample(logits, [row])[0]
            token = choice.token_id
            reply.token_ids.append(token)
            row.seen_token_ids.append(token)
            if token in tokenizer.stop_token_ids:
                reply.finish_reason = "stop"
                break
            text = detokenizer.add_token(token, reasoning=False).content
            logprobs = (self._logprob(token, choice),) if choice.logprob is not None else ()
            if text or logprobs:
                reply.text += text
                emit(TextDelta(text, logprobs))
            if detokenizer.stopped or len(reply.token_ids) >= max_new or cancelled():
                reply.finish_reason = "abort" if cancelled() else "stop" if detokenizer.stopped else "length"
                break
            last = self._feed_back(prepared, token, len(reply.token_ids) - 1)  # [H]
            if keep_hidden or speech is not None:
                embed = thinker.model.embed_tokens(torch.tensor(token, device=thinker.device))  # [H]
                if keep_hidden:
                    reply.reply_hidden.append(last)
                    reply.reply_embeds.append(embed)
                if speech is not None:
                    speech.add_reply_token(last, embed)
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

    def _text_bytes(self, token_id: int) -> bytes:
        tokenizer = self.model.tokenizer
        return b"" if tokenizer.is_special(token_id) else tokenizer.token_bytes(token_id)

    def _logprob(self, token_id: int, choice: TokenSample) -> TokenLogprob:
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


class SpeechStream:
    """The speech of one reply while the thinker writes it: reply tokens in, AudioChunks out.

    `start` with the prompt's hidden states after the thinker's prefill; `add_reply_token` as
    the thinker feeds back each reply token (the first starts the talker: its prefill ends with
    reply token 0; each later one is the text input of one talker step, run at once); `relay`
    the thinker's outputs through it (so chunks carry the text said since the last one);
    `finish` when the reply ends: the talker runs on to its codec end, token2wav flushes.
    Each codec token goes into StreamingToken2Wav as it comes; whatever waveform becomes final
    leaves as one AudioChunk right away.
    """

    def __init__(self, runner: OmniRunner, voice: Voice, seed: int | None, emit: Callable[[EngineOutput], None],
                 cancelled: Callable[[], bool]):
        model = runner.model
        if model.talker is None or model.token2wav is None:
            raise RuntimeError("this checkpoint cannot speak: it has no talker or token2wav")
        self.runner, self.voice, self.seed = runner, voice, seed
        self._emit, self._cancelled = emit, cancelled
        self._talker: Talker = model.talker
        self._thinker_embed = model.thinker.model.embed_tokens
        self._prompt: ThinkerPrompt | None = None
        self._prompt_hidden: torch.Tensor | None = None  # [T, H]
        self._text_inputs = new_talker_text_inputs(self._talker, self._thinker_embed, model.thinker.device)
        self._stream: TalkerStream | None = None
        self._cache = None
        self._token2wav: StreamingToken2Wav | None = None
        self._untold = ""  # reply text not yet attached to an AudioChunk
        self.codes: list[int] = []  # every codec token sent to token2wav, in order

    def relay(self, output: EngineOutput) -> None:
        if isinstance(output, TextDelta):
            self._untold += output.text
        self._emit(output)

    def start(self, prompt: ThinkerPrompt, prompt_hidden: torch.Tensor) -> None:
        self._prompt, self._prompt_hidden = prompt, prompt_hidden

    @torch.inference_mode()
    def add_reply_token(self, hidden: torch.Tensor, embed: torch.Tensor) -> None:
        """Reply token k fed back: its final hidden state and thinker embedding, [H] each."""
        reply_input = hidden + embed
        if self._stream is None:
            self._start_talker(reply_input)
        else:
            self._text_inputs.push(reply_input)
        self._advance()

    @torch.inference_mode()
    def finish(self) -> None:
        """The thinker's reply ended: the talker speaks on (text EOS, then PAD) to its end."""
        if self._stream is None:  # no reply token was fed back: nothing to say
            return
        self._text_inputs.finish()
        self._advance()
        if not self._cancelled():
            self._send(self._token2wav.finish())

    def _start_talker(self, first_reply_input: torch.Tensor) -> None:
        talker, voice = self._talker, self.voice
        bos = voice.bos_token if voice.bos_token is not None else talker.talker_config.tts_text_start_token_id
        prompt = self._prompt
        prefill = build_talker_prefill(talker, self._thinker_embed, prompt.input_ids, prompt.embeds,
                                       self._prompt_hidden, first_reply_input, bos, prompt.rope.positions)
        max_new_tokens = self.runner.talker_max_new_tokens
        self._cache = talker.make_cache(max_slots=1, max_len=prefill.length + max_new_tokens)
        self._stream = start_talker_stream(talker, prefill, self._text_inputs, self._cache, 0,
                                           self.runner.talker_sampling, self.seed, max_new_tokens,
                                           self.runner.speech_vocab_size)
        token2wav = self.runner.model.token2wav
        generator = None
        if self.seed is not None:  # the same noise the whole-reply path draws for this seed
            generator = torch.Generator(device=next(token2wav.parameters()).device).manual_seed(self.seed)
        self._token2wav = StreamingToken2Wav(token2wav, voice, num_steps=self.runner.token2wav_steps,
                                             schedule=self.runner.speech_schedule, generator=generator)
        self._push(self._stream.codes)  # the prefill's code, unless it ended the speech at once

    def _advance(self) -> None:
        """Talker steps while their text input exists (one per reply token; to the end once
        the reply is finished), each code into token2wav at once."""
        stream = self._stream
        while stream.ready and not self._cancelled():
            code = talker_step(self._talker, [stream], self._cache)[0]
            if code is not None:
                self._push([code])

    def _push(self, codes: list[int]) -> None:
        if codes:
            self.codes.extend(codes)
            self._send(self._token2wav.push(codes))

    def _send(self, chunks: list[torch.Tensor]) -> None:
        if not chunks:
            return
        samples = torch.cat(chunks).float().cpu().numpy().astype(np.float32)
        self._emit(AudioChunk(samples, self._untold))
        self._untold = ""
