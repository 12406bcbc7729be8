"""The engine's speech stage for Qwen3-Omni: talker + code predictor + streaming Code2Wav.

    thinker forward   LayerHiddenStates: a hook on thinker layer `accept_hidden_layer` keeps each
                      computed token's state beside its K/V (by block, as speech_stage.py keeps
                      final states), for the media placeholders of the prompt's user turns
    `computed`        the prompt is in: the stream keeps it; each reply token fed back: its
                      thinker embedding, projected, is the talker's next text input (token 0
                      also runs the talker's prefill, into the stream's own talker row)
    `step`            Qwen3SpeechStage: ONE batched talker step for every stream whose text
                      input is there (each completes a frame: code predictor, then the talker
                      picks the next first code); a stream's frames go to its own
                      Code2WavStream `chunk_frames` at a time (`first_chunk_frames` for its
                      first audio, and whatever is left when its speech ends) ──▶ AudioChunks
                      on the request; the due chunks of one length decode as one batch

The thinker's half and the talker's are apart so that the talker's can run elsewhere
(`--stages`, fed by engine/speech_export.py and engine/speech_engine.py), as Qwen2.5-Omni's.

Code2Wav streams exactly (model/qwen3_omni_code2wav.py), so the chunk sizes trade per-call
overhead against latency and never change the audio.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from omnilive.engine.qwen3_talker_generate import (
    QWEN3_PREDICTOR_SAMPLING,
    QWEN3_TALKER_MAX_NEW_TOKENS,
    QWEN3_TALKER_SAMPLING,
    Qwen3TalkerStream,
    qwen3_talker_step,
    start_qwen3_talker_stream,
)
from omnilive.engine.request import Request
from omnilive.engine.speech_stage import Fail, guarded
from omnilive.model.kv_cache import KVCache
from omnilive.model.layers import PagedCacheWrite
from omnilive.model.qwen2 import Qwen2ForCausalLM
from omnilive.model.qwen3_omni_code2wav import Code2WavStream, Qwen3OmniCode2Wav, decode_joined
from omnilive.model.qwen3_omni_talker import (
    Qwen3OmniTalker,
    Qwen3Voice,
    build_talker_prefill,
    new_talker_text_inputs,
)
from omnilive.model.thinker import ThinkerPrompt
from omnilive.types import SPEECH_SAMPLE_RATE, AudioChunk, SamplingParams


@dataclass(frozen=True)
class Qwen3SpeechSettings:
    """How every Qwen3-Omni stream of one engine speaks."""

    chunk_frames: int = 8  # Code2Wav frames per decode (12.5 a second)
    first_chunk_frames: int = 2  # of a stream's first decode: its first audio comes sooner
    talker_sampling: SamplingParams = QWEN3_TALKER_SAMPLING
    predictor_sampling: SamplingParams = QWEN3_PREDICTOR_SAMPLING
    talker_max_new_tokens: int = QWEN3_TALKER_MAX_NEW_TOKENS


@dataclass(frozen=True)
class Qwen3SpeechModel:
    """What Qwen3-Omni adds to its thinker to speak (LLMEngine's `speech`)."""

    talker: Qwen3OmniTalker
    code2wav: Qwen3OmniCode2Wav
    settings: Qwen3SpeechSettings = Qwen3SpeechSettings()
    clock: Callable[[], float] = time.monotonic

    def thinker_states(self, thinker: Qwen2ForCausalLM, *, kv_positions: int, block_size: int) -> LayerHiddenStates:
        """What the thinker keeps for the talker (in the thinker's engine, whether or not it speaks there)."""
        return LayerHiddenStates(thinker, self.talker.talker_config.accept_hidden_layer, kv_positions=kv_positions,
                                 block_size=block_size)

    def make_stage(self, thinker_embed: torch.nn.Embedding, *, max_streams: int,
                   context_length: int) -> Qwen3SpeechStage:
        return Qwen3SpeechStage(self, thinker_embed, max_streams=max_streams, context_length=context_length)


class Qwen3SpeechStream:
    """The speech of one request: its talker stream, frames not yet voiced, its Code2Wav state."""

    def __init__(self, stage: Qwen3SpeechStage, voice: Qwen3Voice, seed: int | None, slot: int):
        self.stage, self.voice, self.seed, self.slot = stage, voice, seed, slot
        self._prompt: ThinkerPrompt | None = None
        self._layer_hidden: torch.Tensor | None = None
        self._pending_text: list[torch.Tensor] = []  # projected reply tokens before the prefill
        self._text_finished = False
        self.talker_stream: Qwen3TalkerStream | None = None
        self.frames: list[list[int]] = []  # frames not voiced yet
        self.code2wav = Code2WavStream()
        self._untold = ""
        self.first_audio_at: float | None = None
        self.audio_seconds = 0.0

    def start(self, prompt: ThinkerPrompt, layer_hidden: torch.Tensor) -> None:
        self._prompt, self._layer_hidden = prompt, layer_hidden

    def tell(self, text: str) -> None:
        """Reply text the caller has been sent; the next AudioChunk says it."""
        self._untold += text

    @property
    def ready(self) -> bool:
        return self.talker_stream is not None and self.talker_stream.ready

    @property
    def done(self) -> bool:
        """The talker has ended (or never started and the reply is over)."""
        if self.talker_stream is None:
            return self._text_finished
        return self.talker_stream.finished

    def finish_text(self) -> None:
        self._text_finished = True
        if self.talker_stream is not None:
            self.talker_stream.text_inputs.finish()

    @torch.inference_mode()
    def add_reply_token(self, hidden: None, embed: torch.Tensor) -> None:
        """Reply token k fed back: its thinker embedding [E] (the talker reads no reply hidden
        state: `hidden` is None). Token 0 runs the talker's prefill."""
        stage = self.stage
        talker = stage.talker
        if self.talker_stream is not None:
            self.talker_stream.text_inputs.push(talker.text_projection(embed.to(talker.dtype)))
            return
        prompt = self._prompt
        s = stage.settings
        layer_hidden = self._layer_hidden if self._prompt_has_user_media() else None
        prefill = build_talker_prefill(talker, stage.thinker_embed, prompt.input_ids, prompt.embeds, embed[None],
                                       self.voice.speaker_id, layer_hidden, prompt.rope.positions)
        text_inputs = new_talker_text_inputs(talker, stage.thinker_embed, prefill)
        self.talker_stream = start_qwen3_talker_stream(
            talker, prefill, text_inputs, stage.talker_cache, self.slot, s.talker_sampling, s.predictor_sampling,
            self.seed, s.talker_max_new_tokens)
        if self._text_finished:
            text_inputs.finish()

    def _prompt_has_user_media(self) -> bool:
        c = self.stage.talker.talker_config
        media = torch.tensor([c.audio_token_id, c.image_token_id, c.video_token_id], device=self._prompt.input_ids.device)
        return bool(torch.isin(self._prompt.input_ids, media).any())

    def due_codes(self) -> torch.Tensor | None:
        """The codes [1, G, n] a chunk is due for (taken from `frames`): a full chunk (a smaller
        one first), or every frame left once the talker has ended."""
        s = self.stage.settings
        size = s.first_chunk_frames if self.first_audio_at is None else s.chunk_frames
        if not self.frames or (len(self.frames) < size and not self.done):
            return None
        take = len(self.frames) if self.done else len(self.frames) // size * size
        codes = torch.tensor(self.frames[:take], device=self.stage.code2wav_device).T[None]
        del self.frames[:take]
        return codes

    def voiced(self, wav: torch.Tensor) -> AudioChunk | None:
        """The AudioChunk of Code2Wav's wav [1, 1, n] for this stream's due codes."""
        samples = wav[0, 0].float().cpu().numpy().astype(np.float32)
        if not len(samples):
            return None
        chunk, self._untold = AudioChunk(samples, self._untold), ""
        if self.first_audio_at is None:
            self.first_audio_at = self.stage.clock()
        self.audio_seconds += len(samples) / SPEECH_SAMPLE_RATE
        return chunk

    def untold_tail(self) -> AudioChunk | None:
        """The reply text no AudioChunk has said yet (the talker may end before the thinker):
        the transcript still holds the whole reply."""
        if not self._untold:
            return None
        chunk, self._untold = AudioChunk(np.zeros(0, dtype=np.float32), self._untold), ""
        return chunk


class LayerHiddenStates:
    """The thinker's side of Qwen3-Omni's speech: a hook on thinker layer `accept_hidden_layer`
    keeps each computed token's state by block beside its K/V; a spoken request's stream (a
    Qwen3SpeechStream here, or an ExportedSpeech when the talker runs elsewhere) is told its
    prompt's states, then each reply token's embedding."""

    def __init__(self, thinker: Qwen2ForCausalLM, accept_hidden_layer: int, *, kv_positions: int, block_size: int):
        self.thinker_embed = thinker.model.embed_tokens
        weight = self.thinker_embed.weight
        self.block_size = block_size
        self.layer_cache = torch.zeros(kv_positions, weight.shape[1], dtype=weight.dtype, device=weight.device)
        self._hook = keep_layer_states(thinker.model.layers[accept_hidden_layer - 1], self)

    def keep_layer_states(self, args: tuple, output: torch.Tensor) -> None:
        """Every computed token's state after layer `accept_hidden_layer`, at its K/V's place."""
        write = args[-1]
        if not isinstance(write, PagedCacheWrite):
            return
        per_block = write.num_kv_heads * self.block_size
        entries = write.write_index.view(-1, write.num_kv_heads)[:, 0]  # head 0 of each token
        rows = entries // per_block * self.block_size + entries % per_block
        self.layer_cache.index_copy_(0, rows, output.reshape(-1, output.shape[-1]).to(self.layer_cache.dtype))

    def computed(self, request: Request, start: int, end: int, hidden: torch.Tensor, block_size: int) -> None:
        """The request's tokens start..end-1 ran through the thinker."""
        speech = request.speech
        if speech is None:
            return
        prompt_length = len(request.prompt_ids)
        if start < prompt_length <= end:
            ids = request.blocks.block_ids
            rows = [ids[p // block_size] * block_size + p % block_size for p in range(prompt_length)]
            speech.start(request.prepared, self.layer_cache.index_select(
                0, torch.tensor(rows, dtype=torch.long, device=self.layer_cache.device)))
        reply = range(max(start, prompt_length), end)
        if reply:
            embeds = self.thinker_embed(torch.tensor(request.token_ids[reply.start:reply.stop],
                                                     device=self.layer_cache.device))
            for embed in embeds:
                speech.add_reply_token(None, embed)

    def close(self) -> None:
        self._hook.remove()


class Qwen3SpeechStage:
    """The talker's side: each spoken request's Qwen3SpeechStream, stepped together. Its streams
    are told the thinker's states by LayerHiddenStates (in the thinker's engine) or by feeds
    (engine/speech_engine.py)."""

    def __init__(self, model: Qwen3SpeechModel, thinker_embed: torch.nn.Embedding, *, max_streams: int,
                 context_length: int):
        self.talker, self.code2wav, self.settings, self.clock = model.talker, model.code2wav, model.settings, model.clock
        self.code2wav_device = next(self.code2wav.parameters()).device
        self.thinker_embed = thinker_embed
        # a talker row holds the user turns, the assistant's 9 opening inputs and every frame
        self.talker_cache: KVCache = self.talker.make_cache(max_streams, context_length + 9
                                                            + self.settings.talker_max_new_tokens)
        self.predictor_cache = self.talker.make_predictor_cache(max_streams)

    def new_stream(self, voice: Qwen3Voice, seed: int | None, slot: int) -> Qwen3SpeechStream:
        """The speech of one request, in talker row `slot`."""
        return Qwen3SpeechStream(self, voice, seed, slot)

    def open(self, request: Request) -> None:
        """A spoken request was admitted with talker row `request.talker_slot`."""
        request.speech = self.new_stream(request.voice, request.sampling.seed, request.talker_slot)

    def step(self, speaking: list[Request], fail: Fail) -> None:
        """One talker step for every ready stream, together; then each stream's due audio."""
        ready = [r for r in speaking if not r.failed and r.speech.ready]
        if ready:
            try:
                frames = qwen3_talker_step(self.talker, [r.speech.talker_stream for r in ready], self.talker_cache,
                                           self.predictor_cache)
            except Exception as error:  # noqa: BLE001 - a bug: the streams in this step fail
                for request in ready:
                    fail(request, error)
                frames = []
            for request, frame in zip(ready, frames):
                request.speech.frames.append(frame)
        self.voice_due_chunks([r for r in speaking if not r.failed], fail)
        for request in speaking:
            speech = request.speech
            if request.finished and not request.failed and speech.done and not speech.frames:
                if (tail := speech.untold_tail()) is not None:
                    request.audio.append(tail)
                request.speech_done = True

    @torch.inference_mode()
    def voice_due_chunks(self, speaking: list[Request], fail: Fail) -> None:
        """Every stream's due chunk; streams with chunks of one length (and all begun or all new)
        decode as one batch: Code2Wav reads its weights once for all of them."""
        groups: dict[tuple[int, bool], list[tuple[Request, torch.Tensor]]] = {}
        for request in speaking:
            if (codes := guarded(request, fail, request.speech.due_codes)) is not None:
                key = (codes.shape[-1], request.speech.code2wav.frames == 0)
                groups.setdefault(key, []).append((request, codes))
        for group in groups.values():
            requests = [request for request, _ in group]
            try:
                wavs = decode_joined(self.code2wav, [codes for _, codes in group],
                                     [request.speech.code2wav for request in requests])
            except Exception as error:  # noqa: BLE001 - a bug: the streams of this decode fail
                for request in requests:
                    fail(request, error)
                continue
            for request, wav in zip(requests, wavs):
                if (chunk := guarded(request, fail, request.speech.voiced, wav)) is not None:
                    request.audio.append(chunk)


def keep_layer_states(layer: torch.nn.Module, states: LayerHiddenStates):
    """Hook `layer`'s output into `states.keep_layer_states`; the hook removes itself once the
    states are gone (a thinker may outlive its engine: tests and benches build several)."""
    states_ref = weakref.ref(states)

    def hook(module, args, output):
        if (alive := states_ref()) is None:
            handle.remove()
        else:
            alive.keep_layer_states(args, output)

    handle = layer.register_forward_hook(hook)
    return handle


__all__ = ["LayerHiddenStates", "Qwen3SpeechModel", "Qwen3SpeechSettings", "Qwen3SpeechStage", "Qwen3SpeechStream"]
