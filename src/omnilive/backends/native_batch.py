"""Continuous batching for the native Qwen2.5-Omni engine: many requests, one step loop.

    prepare_media(job)    on the caller's thread (NativeBackend's prompt worker): the vision
                          and audio towers run there, never on the step loop
    add(job) ──waiting──▶ admitted between steps when a thinker row, KV blocks for its
                          prompt (its reply's blocks reserved) and, to speak, a talker slot are
                          free; a spoken job waiting for a talker slot lets the jobs behind it
                          that fit go first; a job short of blocks waits (so do those behind it)
    step():  drop aborted jobs (rows and blocks free at once)
             ONE thinker forward for every job feeding back its last token and the prefill
                 chunks within `prefill_chunk_tokens` (each with its own embeddings, media
                 merged): rows of the paged cache, per-row positions and M-RoPE ids
             ONE sampling call for every job whose next token is due; detokenise, stop, limits
             ONE talker decode forward for every speech stream whose text input is there;
                 each code into that job's own StreamingToken2Wav
             the token2wav windows the streams' codes completed wait until one is urgent
                 (below), then ALL waiting windows are solved in one batched ODE integration
                 (per window length and time grid) ──▶ each stream's vocoder ──▶ AudioChunks
    A job's outputs go to its own `emit`; a job that fails (bad media) fails alone.

The thinker cache is paged (engine.kv_cache.PagedKVCache, engine.block_manager): every full
block a job computed (prompt or fed-back reply) is findable by a key of its tokens, the tokens
before it and the media it covers (native_media_keys: a content hash of each item's encoder input),
so a text-out job whose prompt starts like an earlier or running one's (the next turn of a
chat, the same image asked again) references those blocks instead of computing them. M-RoPE
ids of a prefix depend only on what comes before, so the cached keys are valid as they are.
A model that speaks also keeps each block's final thinker hidden states beside its keys and
values (`hidden_cache`, ~1/9 of the KV bytes at real sizes): the talker's prefill needs the
hidden state of every prompt token, so a spoken job reuses cached blocks too (the next turn of
a voice chat computes only what was added).

Speech windows wait to be batched: a stream's next window is urgent when nothing of the reply
has been heard yet, when its speech has ended, or when less than `speech_lead_s` of audio is
ahead of where its listener is (the time since its first chunk). Slower than real time (a CPU)
every window is urgent at once; faster (a GPU), windows of several streams gather and one
batched solve costs about what one does.

A job's thinker row and blocks are freed when its reply ends (blocks stay findable until
evicted); its talker slot when its speech ends. Not thread-safe: NativeBackend steps it
from one thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from omnilive.backends.native_generate import OmniRunner
from omnilive.backends.native_media_keys import MediaEncoderCache, media_items, media_spans, mrope_layout_of
from omnilive.backends.native_prompt import OmniPrompt
from omnilive.backends.native_speech import SpeechStream
from omnilive.engine.block_manager import BlockManager, BlockTable
from omnilive.engine.detokenizer import Detokenizer
from omnilive.engine.sampling import SamplingRow, TokenSample, make_generator, sample
from omnilive.types import (
    SPEECH_SAMPLE_RATE,
    EngineError,
    EngineOutput,
    Finished,
    FinishReason,
    SamplingParams,
    TextDelta,
    Usage,
)
from omnilive.engine.talker_generate import talker_step
from omnilive.model.token2wav_stream import DiTWindow, solve_windows, window_batches
from omnilive.model.thinker import ThinkerPrompt
from omnilive.model.token2wav import Voice

log = logging.getLogger(__name__)

Emit = Callable[[EngineOutput | BaseException], None]


@dataclass(eq=False)
class OmniJob:
    """One request in the loop: what was asked, and how far it got."""

    prompt: OmniPrompt
    sampling: SamplingParams
    voice: Voice | None  # None: text only
    emit: Emit  # its outputs, then Finished; or one exception
    request_id: str = ""
    prepared: ThinkerPrompt | None = None  # media encoded, embeddings merged: before add or at admission
    slot: int | None = None  # thinker cache row (block table), while the reply is being written
    blocks: BlockTable = field(default_factory=BlockTable)  # its KV blocks while it holds a row
    talker_slot: int | None = None  # while it speaks
    computed: int = 0  # prompt tokens in the cache
    cached: int = 0  # of those, found cached at admission (not computed)
    prompt_hidden: list[torch.Tensor] = field(default_factory=list)  # [chunk, H] each, kept to speak
    token_ids: list[int] = field(default_factory=list)
    feed_back: int | None = None  # the sampled token the next decode step feeds back
    max_new: int = 0
    row: SamplingRow | None = None
    detokenizer: Detokenizer | None = None
    speech: SpeechStream | None = None
    windows: list[DiTWindow] = field(default_factory=list)  # token2wav windows waiting to be solved
    first_audio_at: float | None = None  # batch clock when its first AudioChunk went out
    audio_seconds: float = 0.0  # of AudioChunks sent
    finish_reason: FinishReason | None = None  # set when the reply ends
    aborted: bool = False
    done: bool = False  # Finished (or an error) was emitted

    @property
    def prefilling(self) -> bool:
        return self.prepared is not None and self.computed < len(self.prepared)


class OmniBatch:
    def __init__(self, runner: OmniRunner, max_batch: int = 4, block_size: int = 16, num_blocks: int | None = None,
                 speech_lead_s: float = 1.5, clock: Callable[[], float] = time.monotonic,
                 windows_per_step: int | None | str = "auto", media_cache_bytes: int = 256 << 20):
        """num_blocks: KV blocks of the thinker cache (default: max_batch full-context rows).
        speech_lead_s: audio a stream keeps ahead of its listener before its windows must be
        solved (they wait for others' until then); clock: seconds (tests pass their own).
        windows_per_step: token2wav windows solved per step at most (None: every waiting one);
        "auto": None on a GPU, 1 on a CPU (see `_synthesize`). media_cache_bytes: encoder
        outputs kept for media sent again (native_media_keys.MediaEncoderCache)."""
        model = runner.model
        self.runner, self.thinker, self.max_batch = runner, model.thinker, max_batch
        self.speech_lead_s, self.clock = speech_lead_s, clock
        if windows_per_step == "auto":
            on_gpu = model.token2wav is not None and next(model.token2wav.parameters()).device.type == "cuda"
            windows_per_step = None if on_gpu else 1
        self.windows_per_step = windows_per_step
        self.media_cache = MediaEncoderCache(media_cache_bytes)
        self.cache = self.thinker.make_paged_cache(max_batch, runner.context_length, block_size, num_blocks)
        self.blocks = BlockManager(self.cache.num_blocks, block_size)
        self.computed_prompt_tokens = 0  # prompt tokens run through the thinker (cached ones are not)
        self.can_speak = model.talker is not None and model.token2wav is not None
        self.hidden_cache: torch.Tensor | None = None  # [num_blocks * block_size, H]: final hidden states
        if self.can_speak:  # a talker row holds the prompt, 2 more inputs and every codec token
            config = self.thinker.thinker_config.text_config
            self.hidden_cache = torch.zeros(self.cache.num_blocks * block_size, config.hidden_size,
                                            dtype=self.thinker.dtype, device=self.thinker.device)
            self.speech_settings = runner.speech_settings
            self.talker_cache = model.talker.make_cache(
                max_batch, runner.context_length + 2 + self.speech_settings.talker_max_new_tokens)
        self.waiting: deque[OmniJob] = deque()
        self.running: list[OmniJob] = []  # admitted, in admission order

    def prepare_media(self, job: OmniJob) -> None:
        """Encode the job's media and merge them into its prompt embeddings (ThinkerPrompt), on
        the calling thread: a worker does it before `add`, so the step loop, which every
        running stream waits on, only runs the prefill chunks. Hashing the media for the
        job's block keys (`media_spans`) is done here too, and media encoded before (the earlier
        turns of a chat) come from the media cache. Reads weights; thread-safe."""
        prompt = job.prompt
        items = media_items(prompt.media, mrope_layout_of(self.thinker))
        features = self.media_cache.features(items, self.thinker.encode_media)
        job.prepared = self.thinker.prepare_prompt(prompt.input_ids, prompt.media, features=features)
        job.blocks = BlockTable(media_spans(prompt.input_ids, items))

    def add(self, job: OmniJob) -> None:
        if job.voice is not None and not self.can_speak:
            raise EngineError("this model cannot speak: its checkpoint has no talker", param="modalities")
        context = self.runner.context_length
        if len(job.prompt) >= context:
            raise EngineError(f"The prompt is {len(job.prompt)} tokens; this model's context is {context}.",
                              param="messages", code="context_length_exceeded")
        job.max_new = min(job.sampling.max_tokens or context, context - len(job.prompt))
        if (needed := self._blocks_needed(job)) > self.blocks.num_blocks:
            raise EngineError(f"The prompt and reply need {needed} KV cache blocks of {self.blocks.block_size} "
                              f"tokens; the cache has {self.blocks.num_blocks}.", param="max_tokens",
                              code="context_length_exceeded")
        self.waiting.append(job)

    def abort(self, job: OmniJob) -> None:
        """Stop a job; its slots are freed at the start of the next step."""
        job.aborted = True

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def run_until_idle(self) -> None:
        """Step until every job added so far has finished (tests, benchmarks)."""
        while self.has_work():
            self.step()

    def fail_all(self, error: BaseException) -> None:
        """A step failed outside any one job (a bug): every job gets the error."""
        for job in [*self.running, *self.waiting]:
            self._fail(job, error)

    # the step

    @torch.inference_mode()
    def step(self) -> None:
        for job in [*self.running, *self.waiting]:
            if job.aborted:
                self._end(job, "abort")
        self._admit()
        self.running = [job for job in self.running if not job.done]
        decoding = [job for job in self.running if job.feed_back is not None]
        chunks: list[tuple[OmniJob, int, int]] = []  # (job, start, end): prompt tokens to compute
        budget = self.runner.prefill_chunk_tokens
        for job in [job for job in self.running if job.prefilling]:
            if budget <= 0:
                break
            size = min(len(job.prepared) - job.computed, budget)
            budget -= size
            chunks.append((job, job.computed, job.computed + size))
        if decoding or chunks:
            due, logits = self._think(decoding, chunks)
            if due:
                samples = sample(logits, [job.row for job in due])
                for job, choice in zip(due, samples):
                    self._guarded(job, self._take_token, job, choice)
        self._speak()
        self.running = [job for job in self.running if not job.done]

    def _admit(self) -> None:
        """Waiting jobs in order while thinker rows are free. A spoken job that finds no talker
        slot (those are held until the speech ends, past the reply) stays first in line, but
        the jobs behind it that fit are admitted: no head-of-line blocking of text replies.
        A job short of KV blocks stops admission: it goes first once blocks are freed."""
        for job in list(self.waiting):
            if not self.cache.num_free_rows:
                return
            if job.voice is not None and not self.talker_cache.num_free:
                continue
            if job.prepared is None:  # the caller did not encode its media (tests, benchmarks)
                self._guarded(job, self.prepare_media, job)
            taken = not job.done and self._guarded(job, self._take_blocks, job)
            if job.done:
                continue  # its media failed: it failed alone
            if not taken:
                return
            self.waiting.remove(job)
            job.slot = self.cache.allocate_row()
            self.cache.set_blocks(job.slot, 0, job.blocks.block_ids)
            if job.voice is not None:
                job.talker_slot = self.talker_cache.allocate()
            self.running.append(job)
            self._guarded(job, self._prepare, job)

    def _take_blocks(self, job: OmniJob) -> bool:
        """Blocks for the job's prompt (cached ones referenced), if that leaves the blocks every
        admitted job (this one included) may still grow into."""
        keep_free = self._reserved() + self._blocks_needed(job) - self.blocks.blocks_for(len(job.prompt))
        cached = self.blocks.admit(job.blocks, job.prompt.input_ids, keep_free)  # None: nothing taken
        if cached is None:
            return False
        job.computed = job.cached = cached
        return True

    def _blocks_needed(self, job: OmniJob) -> int:
        """Blocks the job holds at most: its prompt and every reply token fed back (all but the last)."""
        return self.blocks.blocks_for(len(job.prompt) + max(job.max_new - 1, 0))

    def _reserved(self) -> int:
        """Blocks the running jobs may still take as their replies grow."""
        return sum(self._blocks_needed(job) - len(job.blocks.block_ids)
                   for job in self.running if job.slot is not None)

    def _prepare(self, job: OmniJob) -> None:
        """Set the job up for its prefill (its media were encoded by `prepare_media`, on the
        caller's prompt worker or at admission)."""
        runner, sampling = self.runner, job.sampling
        job.row = SamplingRow(sampling, make_generator(sampling.seed), list(job.prompt.input_ids))
        job.detokenizer = Detokenizer(runner.text_bytes, sampling.stop)
        if job.voice is not None:
            model = runner.model
            job.speech = SpeechStream(model.talker, model.token2wav, self.thinker.model.embed_tokens,
                                      self.speech_settings, job.voice, sampling.seed, self.talker_cache,
                                      job.talker_slot)

    def _think(self, decoding: list[OmniJob],
               chunks: list[tuple[OmniJob, int, int]]) -> tuple[list[OmniJob], torch.Tensor]:
        """ONE thinker forward for every job feeding back its last token and every prefill chunk
        (the weights are read once per step); returns the jobs whose next token is due and their
        logits [len(due), V].

        Reply token k of a job sits at cache position len(prompt) + k, its three rotary ids there
        + the prompt's delta; a chunk brings its prompt's own embeddings (media merged) and
        M-RoPE ids. Rows are right-padded to the longest; the model runs only real tokens."""
        device = self.thinker.device
        for job in decoding:  # never short: admission reserved every block a reply can take
            self._grow(job, len(job.prepared) + len(job.token_ids))
        fed_back = torch.tensor([job.feed_back for job in decoding], dtype=torch.long, device=device)
        fed_embeds = self.thinker.model.embed_tokens(fed_back)  # [D, H]
        inputs = [job.prepared.prefill_inputs(start, end) for job, start, end in chunks]
        width = max([1, *(end - start for _, start, end in chunks)])
        rows = len(decoding) + len(chunks)
        embeds = fed_embeds.new_zeros(rows, width, fed_embeds.shape[-1])
        positions = torch.full((rows, width), -1, dtype=torch.long, device=device)
        rope_positions = torch.zeros((3, rows, width), dtype=torch.long, device=device)
        for i, job in enumerate(decoding):
            position = len(job.prepared) + len(job.token_ids) - 1
            embeds[i, 0], positions[i, 0] = fed_embeds[i], position
            rope_positions[:, i, 0] = position + job.prepared.rope_delta
        for i, ((job, start, end), chunk) in enumerate(zip(chunks, inputs), start=len(decoding)):
            embeds[i, : end - start] = chunk["inputs_embeds"][0]
            positions[i, : end - start] = chunk["positions"][0]
            rope_positions[:, i, : end - start] = chunk["rope_positions"][:, 0]
        slots = torch.tensor([job.slot for job in decoding] + [job.slot for job, _, _ in chunks], device=device)
        hidden = self.thinker(None, positions, self.cache, slots, inputs_embeds=embeds,
                              rope_positions=rope_positions)  # [rows, width, H]
        due, states = list(decoding), [hidden[: len(decoding), 0]]  # states: [rows of due, H] each
        if decoding:
            self._decoded(decoding, hidden[: len(decoding), 0], fed_embeds)
        for i, (job, start, end) in enumerate(chunks, start=len(decoding)):
            if self._guarded(job, self._prefilled, job, start, end, hidden[i, : end - start]) and not job.done:
                due.append(job)
                states.append(hidden[i, end - start - 1][None])
        if not due:
            return due, hidden.new_empty(0)
        return due, self.thinker.compute_logits(torch.cat(states))

    def _decoded(self, jobs: list[OmniJob], hidden: torch.Tensor, embeds: torch.Tensor) -> None:
        """After the forward: each job's fed-back token's hidden state [B, H] (and embedding)."""
        device = hidden.device
        if self.hidden_cache is not None:  # the fed-back tokens' hidden states, for a later spoken turn
            rows = [self._hidden_row(job, len(job.prepared) + len(job.token_ids) - 1) for job in jobs]
            self.hidden_cache.index_copy_(0, torch.tensor(rows, device=device), hidden.to(self.hidden_cache.dtype))
        for job in jobs:  # the reply's full blocks too: the next turn of a chat starts with them
            self.blocks.commit(job.blocks, [*job.prompt.input_ids, *job.token_ids],
                               len(job.prepared) + len(job.token_ids))
        for i, job in enumerate(jobs):
            if job.speech is not None:
                self._guarded(job, job.speech.add_reply_token, hidden[i], embeds[i])
            job.feed_back = None

    def _prefilled(self, job: OmniJob, start: int, end: int, hidden: torch.Tensor) -> bool:
        """After the forward: prompt tokens start..end-1 are in the job's blocks, their final
        hidden states [n, H]; True when that completed the prompt (its first token is due)."""
        job.computed = end
        self.computed_prompt_tokens += end - start
        self._keep_hidden(job, range(start, end), hidden)
        self.blocks.commit(job.blocks, job.prompt.input_ids, end)
        if job.speech is not None:
            job.prompt_hidden.append(hidden)
        if end < len(job.prepared):
            return False
        if job.speech is not None:  # the cached prefix's hidden states, then the computed ones
            cached = self._kept_hidden(job, range(job.cached))
            job.speech.start(job.prepared, torch.cat([cached, *job.prompt_hidden]))
            job.prompt_hidden = []
        return True

    def _keep_hidden(self, job: OmniJob, positions: range, hidden: torch.Tensor) -> None:
        """The final hidden states [n, H] of the job's tokens at `positions`, into their blocks."""
        if self.hidden_cache is not None:
            self.hidden_cache.index_copy_(0, self._hidden_index(job, positions), hidden.to(self.hidden_cache.dtype))

    def _kept_hidden(self, job: OmniJob, positions: range) -> torch.Tensor:
        """[n, H]: what `_keep_hidden` stored for these positions (by this job or, for cached
        blocks, by the job that computed them)."""
        return self.hidden_cache.index_select(0, self._hidden_index(job, positions))

    def _hidden_index(self, job: OmniJob, positions: range) -> torch.Tensor:
        return torch.tensor([self._hidden_row(job, p) for p in positions], dtype=torch.long,
                            device=self.hidden_cache.device)

    def _hidden_row(self, job: OmniJob, position: int) -> int:
        """The hidden_cache row of the job's token at `position` (in its block, like its K/V)."""
        size = self.blocks.block_size
        return job.blocks.block_ids[position // size] * size + position % size

    def _grow(self, job: OmniJob, num_tokens: int) -> None:
        table = job.blocks
        before = len(table.block_ids)
        if not self.blocks.grow(table, num_tokens):
            raise RuntimeError(f"no KV block for request {job.request_id or id(job)}: the reservation is wrong")
        self.cache.set_blocks(job.slot, before, table.block_ids[before:])

    def _take_token(self, job: OmniJob, choice: TokenSample) -> None:
        """A sampled token: stop token, text, stop string, limit; else fed back next step."""
        if job.done or job.finish_reason is not None:
            return  # it failed earlier in this step
        token = choice.token_id
        job.token_ids.append(token)
        job.row.seen_token_ids.append(token)
        if token in self.runner.model.tokenizer.stop_token_ids:
            return self._end_reply(job, "stop")
        text = job.detokenizer.add_token(token, reasoning=False).content
        logprobs = (self.runner.logprob(token, choice),) if choice.logprob is not None else ()
        if text or logprobs:
            self._tell(job, TextDelta(text, logprobs))
        if job.detokenizer.stopped:
            return self._end_reply(job, "stop")
        if len(job.token_ids) >= job.max_new:
            return self._end_reply(job, "length")
        job.feed_back = token

    def _tell(self, job: OmniJob, delta: TextDelta) -> None:
        if job.speech is not None:
            job.speech.tell(delta.text)
        job.emit(delta)

    def _end_reply(self, job: OmniJob, reason: FinishReason) -> None:
        """The thinker is done with this job: free its row; the speech (if any) goes on."""
        job.finish_reason = reason
        if tail := job.detokenizer.finish().content:
            self._tell(job, TextDelta(tail))
        self._free_thinker_slot(job)
        if job.speech is None:
            self._end(job, reason)
        else:
            job.speech.finish_text()

    def _speak(self) -> None:
        """One talker step for every ready stream, together; finished streams flush and end."""
        ready = [job for job in self.running if not job.done and job.speech is not None and job.speech.ready]
        if ready:
            try:
                codes = talker_step(self.runner.model.talker, [job.speech.talker_stream for job in ready],
                                    self.talker_cache)
            except Exception as error:  # noqa: BLE001 - a bug: the streams in this step fail
                for job in ready:
                    self._fail(job, error)
                return
            for job, code in zip(ready, codes):
                self._guarded(job, job.speech.take, code)
        self._synthesize()
        for job in self.running:
            if (not job.done and job.finish_reason is not None and job.speech is not None and job.speech.done
                    and not job.windows):  # its solved windows are out: flush the tail
                self._guarded(job, self._end_speech, job)

    def _synthesize(self) -> None:
        """Collect the token2wav windows the streams' codes completed; once one is urgent, solve
        the waiting windows, those of streams not heard yet first, then of those with the least
        audio ahead of their listeners; each stream's audio goes out in its own order as soon as
        its windows so far are solved.

        On a GPU a batched solve costs about what one window does: every waiting window is
        solved now. On a CPU the DiT is compute-bound, a solve of N windows takes N times as
        long and would hold every stream in it (and the whole step loop) back: one window per
        step (`windows_per_step`), the most urgent stream's next one, and the loop steps the
        thinker and talker in between."""
        speaking = [job for job in self.running if not job.done and job.speech is not None]
        for job in speaking:
            job.windows += self._guarded(job, job.speech.due_windows) or []
        waiting = [job for job in speaking if job.windows and not job.done]
        full = sum(len(job.windows) for job in waiting) >= self.max_batch
        if not (full or any(self._urgent(job) for job in waiting)):
            return
        waiting.sort(key=self._audio_ahead)
        if self.windows_per_step is None:
            due = [(job, window) for job in waiting for window in job.windows]
        else:  # each stream's next window only: the rest wait for later steps, in order
            due = [(job, job.windows[0]) for job in waiting][: self.windows_per_step]
        taken = {id(window) for _, window in due}
        for job in waiting:
            job.windows = [window for window in job.windows if id(window) not in taken]
        queues: dict[OmniJob, list[DiTWindow]] = {}  # each stream's windows of this solve, in order
        for job, window in due:
            queues.setdefault(job, []).append(window)
        solved: dict[int, torch.Tensor] = {}  # id(window) → mel
        for indices in window_batches([window for _, window in due]):
            batch = [due[i][1] for i in indices]
            try:
                solved.update(zip(map(id, batch), solve_windows(batch)))
            except Exception as error:  # noqa: BLE001 - a bug: the streams in this batch fail
                log.exception("token2wav solve failed")
                for i in indices:
                    self._fail(due[i][0], error)
            for job, queue in queues.items():  # a window completes only after its stream's earlier ones
                while queue and not job.done and id(queue[0]) in solved:
                    window = queue.pop(0)
                    self._guarded(job, self._emit_window, job, window, solved.pop(id(window)))

    def _audio_ahead(self, job: OmniJob) -> float:
        """Seconds of audio its listener has still to hear (-inf: nothing heard yet)."""
        if job.first_audio_at is None:
            return float("-inf")
        return job.audio_seconds - (self.clock() - job.first_audio_at)

    def _urgent(self, job: OmniJob) -> bool:
        """Its listener would wait for its next window: nothing heard yet, its speech is over
        (the rest is flushed now), or less than speech_lead_s of audio is left to play."""
        return job.speech.done or self._audio_ahead(job) < self.speech_lead_s

    def _emit_window(self, job: OmniJob, window: DiTWindow, mel: torch.Tensor) -> None:
        if (chunk := job.speech.complete(window, mel)) is not None:
            if job.first_audio_at is None:
                job.first_audio_at = self.clock()
            job.audio_seconds += len(chunk.samples) / SPEECH_SAMPLE_RATE
            job.emit(chunk)

    def _end_speech(self, job: OmniJob) -> None:
        if (chunk := job.speech.flush()) is not None:
            job.emit(chunk)
        self._end(job, job.finish_reason)

    # endings

    def _end(self, job: OmniJob, reason: FinishReason) -> None:
        """Free every slot the job holds and send its Finished."""
        if job.done:
            return
        self._release(job)
        prompt = job.prompt
        job.emit(Finished(reason, Usage(prompt_tokens=len(prompt), completion_tokens=len(job.token_ids),
                                        audio_prompt_tokens=prompt.audio_tokens,
                                        image_prompt_tokens=prompt.image_tokens, cached_prompt_tokens=job.cached)))

    def _fail(self, job: OmniJob, error: BaseException) -> None:
        if job.done:
            return
        self._release(job)
        job.emit(error if isinstance(error, EngineError) else EngineError(f"the engine failed: {error}"))

    def _guarded(self, job: OmniJob, work: Callable, *args):
        """Run one job's own work; an error there (a bad media item, a bug) fails that job alone."""
        try:
            return work(*args)
        except Exception as error:  # noqa: BLE001 - reported to the job's caller
            log.exception("request %s failed", job.request_id or id(job))
            self._fail(job, error)
            return None

    def _release(self, job: OmniJob) -> None:
        job.done = True
        job.feed_back = None
        self._free_thinker_slot(job)
        if job.talker_slot is not None:
            self.talker_cache.free(job.talker_slot)
            job.talker_slot = None
        if job in self.waiting:
            self.waiting.remove(job)

    def _free_thinker_slot(self, job: OmniJob) -> None:
        if job.slot is not None:
            self.blocks.release(job.blocks)
            self.cache.free_row(job.slot)
            job.slot = None


__all__ = ["OmniBatch", "OmniJob"]
