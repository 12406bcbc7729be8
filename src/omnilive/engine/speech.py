"""The speech of one request while the thinker writes its reply, on a talker cache shared by all.

    reply token k fed back ──its hidden state + embedding──▶ `add_reply_token`
        k = 0: talker prefill into the stream's own slot, first codec token
        k > 0: one more text input; the batch loop then steps every ready stream together
    talker_step over every ready stream at once (SpeechStage) ──codec token──▶ `take`
        ──▶ its StreamingToken2Wav; `due_windows` hands out the DiT windows those codes
        completed, the stage solves them (solve_windows, several streams' together) and gives
        each back through `complete` ──▶ AudioChunk as soon as a waveform chunk is final
    `finish_text` when the reply ends: the talker speaks on (text EOS, then PAD) to its end,
    one batched step per engine step; `flush` hands token2wav's tail out.

A stream only holds state; the engine's SpeechStage (speech_stage.py) decides when each
forward runs.
QuickStartSchedule: token2wav's windows with a smaller first one, for an earlier first chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omnilive.model.kv_cache import KVCache
from omnilive.engine.talker_generate import (
    TALKER_MAX_NEW_TOKENS,
    TALKER_SAMPLING,
    TalkerStream,
    start_talker_stream,
)
from omnilive.types import SPEECH_SAMPLE_RATE, AudioChunk, SamplingParams
from omnilive.model.talker import Talker, build_talker_prefill, new_talker_text_inputs
from omnilive.model.thinker import ThinkerPrompt
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.model.token2wav_stream import DiTWindow, StreamingSchedule, StreamingToken2Wav


@dataclass(frozen=True)
class QuickStartSchedule(StreamingSchedule):
    """Qwen's streaming windows after a smaller first chunk, for an earlier first AudioChunk.

    The first audio needs (first chunk + future) blocks of codes solved, then the vocoder's
    right context (vocoder_receptive_field: 36 frames at real size, 1.5 blocks) of final mel.
    Qwen's 3-block first chunk waits for 48 codes and solves 96 frames; 2 blocks is the
    smallest whose final mel outruns that context: 36 codes, 72 frames. Later chunks are
    Qwen's own, so nothing after the first window is solved more often."""

    first_chunk_blocks: int = 2

    def window(self, chunk: int, block_size: int, utterance_frames: int | None = None) -> tuple[int, int, int, int]:
        if chunk == 0:
            first = StreamingSchedule(self.first_chunk_blocks, self.past_blocks, self.future_blocks)
            return first.window(0, block_size, utterance_frames)
        shift = (self.first_chunk_blocks - self.chunk_blocks) * block_size  # chunk k starts there, k >= 1
        solve_start, chunk_start, chunk_end, solve_end = super().window(chunk, block_size)
        solve_start, chunk_start = max(solve_start + shift, 0), chunk_start + shift
        chunk_end, solve_end = chunk_end + shift, solve_end + shift
        if utterance_frames is not None:
            chunk_end, solve_end = min(chunk_end, utterance_frames), min(solve_end, utterance_frames)
        return solve_start, chunk_start, chunk_end, solve_end


TOKEN2WAV_STEPS = 10  # the reference's ODE steps
# Qwen's own streaming windows (3 blocks, 2 back, 1 ahead) after a 2-block first one
SPEECH_SCHEDULE = QuickStartSchedule(first_chunk_blocks=2)


@dataclass(frozen=True)
class SpeechSettings:
    """How every stream of one engine speaks."""

    token2wav_steps: int
    talker_sampling: SamplingParams
    schedule: StreamingSchedule
    talker_max_new_tokens: int
    speech_vocab_size: int
    first_chunk_steps: int | None = None  # ODE steps of the first window (None: token2wav_steps)
    dit_dtype: torch.dtype = torch.float32  # the streamed DiT solves' matmuls (autocast)

    @classmethod
    def for_model(cls, token2wav: Token2Wav, token2wav_steps: int = TOKEN2WAV_STEPS,
                  talker_sampling: SamplingParams = TALKER_SAMPLING, schedule: StreamingSchedule | None = None,
                  talker_max_new_tokens: int = TALKER_MAX_NEW_TOKENS, first_chunk_steps: int | None = None,
                  dit_dtype: torch.dtype = torch.float32) -> SpeechSettings:
        """Settings for this token2wav: codes it can voice are its DiT's code embeddings (the
        talker's control tokens above them carry no sound, so the talker never picks them);
        codec tokens per reply at most what its DiT can place as mel frames.
        schedule: token2wav's streaming windows (StreamingSchedule.exact(...) makes streamed
        speech equal the whole-reply synthesis, at the cost of a later first chunk);
        first_chunk_steps, dit_dtype: lossy options of streamed speech only."""
        dit = token2wav.code2wav_dit_model
        max_codes = min(talker_max_new_tokens, dit.config.max_position_embeddings // dit.config.repeats)
        return cls(token2wav_steps, talker_sampling, schedule or SPEECH_SCHEDULE, max_codes,
                   dit.text_embed.codec_embed.num_embeddings, first_chunk_steps, dit_dtype)


class SpeechStream:
    def __init__(self, talker: Talker, token2wav: Token2Wav, thinker_embed: torch.nn.Embedding,
                 settings: SpeechSettings, voice: Voice, seed: int | None, cache: KVCache, slot: int):
        self.talker, self.token2wav, self.settings = talker, token2wav, settings
        self.voice, self.seed, self.cache, self.slot = voice, seed, cache, slot
        self._thinker_embed = thinker_embed
        self._text_inputs = new_talker_text_inputs(talker, thinker_embed, thinker_embed.weight.device)
        self._prompt: ThinkerPrompt | None = None
        self._prompt_hidden: torch.Tensor | None = None  # [T, H]
        self.talker_stream: TalkerStream | None = None
        self._wav: StreamingToken2Wav | None = None
        self._untold = ""  # reply text not yet attached to an AudioChunk
        self.codes: list[int] = []  # every codec token sent to token2wav, in order
        self.windows: list[DiTWindow] = []  # token2wav windows waiting to be solved, in order
        self.first_audio_at: float | None = None  # stage clock when its first AudioChunk went out
        self.audio_seconds = 0.0  # of AudioChunks sent

    def start(self, prompt: ThinkerPrompt, prompt_hidden: torch.Tensor) -> None:
        """After the thinker's prefill: the prompt and its final hidden states [T, H]."""
        self._prompt, self._prompt_hidden = prompt, prompt_hidden

    def tell(self, text: str) -> None:
        """Reply text the caller has been sent; the next AudioChunk says it."""
        self._untold += text

    @property
    def ready(self) -> bool:
        """Whether a talker step can run for this stream now."""
        return self.talker_stream is not None and self.talker_stream.ready

    @property
    def done(self) -> bool:
        """The talker has ended (or never started and the reply is over): only `flush` is left."""
        if self.talker_stream is None:
            return self._text_inputs.finished
        return self.talker_stream.finished

    @torch.inference_mode()
    def add_reply_token(self, hidden: torch.Tensor, embed: torch.Tensor) -> None:
        """Reply token k fed back: its final hidden state and thinker embedding, [H] each.
        Token 0 runs the talker's prefill (its first codec token goes to token2wav)."""
        reply_input = hidden + embed
        if self.talker_stream is not None:
            self._text_inputs.push(reply_input)
            return
        prompt, talker = self._prompt, self.talker
        bos = self.voice.bos_token if self.voice.bos_token is not None else talker.talker_config.tts_text_start_token_id
        prefill = build_talker_prefill(talker, self._thinker_embed, prompt.input_ids, prompt.embeds,
                                       self._prompt_hidden, reply_input, bos, prompt.rope.positions)
        s = self.settings
        self.talker_stream = start_talker_stream(talker, prefill, self._text_inputs, self.cache, self.slot,
                                                 s.talker_sampling, self.seed, s.talker_max_new_tokens,
                                                 s.speech_vocab_size)
        generator = None
        if self.seed is not None:  # the same noise the whole-reply path draws for this seed
            generator = torch.Generator(device=next(self.token2wav.parameters()).device).manual_seed(self.seed)
        self._wav = StreamingToken2Wav(self.token2wav, self.voice, num_steps=s.token2wav_steps,
                                       schedule=s.schedule, generator=generator, compute_dtype=s.dit_dtype,
                                       first_chunk_steps=s.first_chunk_steps)
        self.take(self.talker_stream.codes[-1] if self.talker_stream.codes else None)

    def finish_text(self) -> None:
        """The thinker's reply ended."""
        self._text_inputs.finish()

    def take(self, code: int | None) -> None:
        """The talker's newest code (None: it ended) into token2wav."""
        if code is not None:
            self.codes.append(code)
            self._wav.add_codes([code])

    def due_windows(self) -> list[DiTWindow]:
        """token2wav's windows the codes so far completed (each handed out once, in order)."""
        return self._wav.due_windows() if self._wav is not None else []

    @torch.inference_mode()
    def complete(self, window: DiTWindow, mel: torch.Tensor) -> AudioChunk | None:
        """A solved window of this stream (in `due_windows` order) → the audio that became final."""
        return self._chunk([self._wav.complete(window, mel)])

    @torch.inference_mode()
    def flush(self) -> AudioChunk | None:
        """After `done`: token2wav's remaining audio."""
        return self._chunk(self._wav.finish()) if self._wav is not None else None

    def _chunk(self, pieces: list[torch.Tensor]) -> AudioChunk | None:
        pieces = [piece for piece in pieces if piece.numel()]
        if not pieces:
            return None
        samples = torch.cat(pieces).float().cpu().numpy().astype(np.float32)
        chunk, self._untold = AudioChunk(samples, self._untold), ""
        self.audio_seconds += len(samples) / SPEECH_SAMPLE_RATE
        return chunk


__all__ = ["SPEECH_SCHEDULE", "TOKEN2WAV_STEPS", "QuickStartSchedule", "SpeechSettings", "SpeechStream"]
