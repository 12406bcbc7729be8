"""The engine: add requests, call `step()` until `has_work()` is False. One for every model.

    step = schedule   pick decodes and prefill chunks, grow block tables, admit waiting
                      requests (scheduler.py)
         → run        ONE forward for the decoding rows and the prefill chunks together
                      (runner.py), whatever model: Qwen2 text, the Omni thinker, Qwen2.5-VL
         → sample     one batched sampling call for every request whose next token is due;
                      detokenise, thinking budget, stop conditions (request.py)
         → speak      ONE talker step for every spoken request, token2wav windows
                      (speech_stage.py; only for a model that speaks)
         → outputs    each request's deltas; finished replies free their rows and blocks

The KV cache is paged (see block_manager.py): requests whose prompts share a prefix with a
running or finished request (a system prompt, the earlier turns of a chat, the same image)
reference its blocks instead of computing them again. Its memory is that of `max_slots` rows
of `context_length` tokens unless `num_kv_blocks` says otherwise.

Not thread-safe: `AsyncLLM` calls it from a single thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from omnilive.engine.detokenizer import Detokenizer
from omnilive.engine.grammar import Grammar, GrammarVocabulary
from omnilive.engine.request import PreparedPrompt, Request, RequestOutput
from omnilive.engine.runner import ModelRunner, Work
from omnilive.engine.sampling import make_generator, sample
from omnilive.engine.scheduler import AdmissionPolicy, Scheduler, StepPlan
from omnilive.engine.qwen3_speech import LayerHiddenStates, Qwen3SpeechModel, Qwen3SpeechStage
from omnilive.engine.speech import SpeechSettings
from omnilive.engine.speech_export import ExportedSpeech, SpeechExport
from omnilive.engine.speech_stage import FinalHiddenStates, SpeechStage, guarded
from omnilive.engine.tool_calls import OutputFormat, ToolCallParser
from omnilive.engine.thinking import (
    BUDGET_EXHAUSTED_TEXT,
    NO_THINKING_TEXT,
    THINK_LONGER_TEXT,
    AnswerPhrase,
    PlainReasoningTracker,
    ThinkingTracker,
    ThinkMarkers,
    forced_answer_text,
)
from omnilive.model.qwen2 import Qwen2ForCausalLM
from omnilive.model.talker import Talker
from omnilive.model.token2wav import Token2Wav, Voice
from omnilive.types import EngineError, SamplingParams


@dataclass(frozen=True)
class SpeechModel:
    """What a model that speaks adds to its decoder (the Omni thinker): talker and token2wav."""

    talker: Talker
    token2wav: Token2Wav
    settings: SpeechSettings
    speech_lead_s: float = 1.5  # see speech_stage.py
    windows_per_step: int | None | str = "auto"
    clock: Callable[[], float] = time.monotonic

    def thinker_states(self, thinker: Qwen2ForCausalLM, *, kv_positions: int, block_size: int) -> FinalHiddenStates:
        """What the thinker keeps for the talker (in the thinker's engine, whether or not it speaks there)."""
        return FinalHiddenStates(thinker.model.embed_tokens, kv_positions)

    def make_stage(self, thinker_embed: torch.nn.Embedding, *, max_streams: int, context_length: int) -> SpeechStage:
        """The talker's side, wherever it runs: the thinker's engine, or a speech engine of its own."""
        return SpeechStage(self.talker, self.token2wav, thinker_embed, self.settings, max_streams=max_streams,
                           context_length=context_length, speech_lead_s=self.speech_lead_s, clock=self.clock,
                           windows_per_step=self.windows_per_step)


class EngineTokenizer(Protocol):
    """What the engine needs from a tokenizer (omnilive.model.tokenizer.Tokenizer has it)."""

    @property
    def stop_token_ids(self) -> frozenset[int]: ...  # EOS and end-of-turn tokens

    def encode(self, text: str) -> list[int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def is_special(self, token_id: int) -> bool: ...  # control tokens: never shown as text


class LLMEngine:
    def __init__(
        self,
        model: Qwen2ForCausalLM,
        tokenizer: EngineTokenizer,
        *,
        max_slots: int = 4,
        context_length: int = 4096,
        prefill_chunk_tokens: int = 256,
        kv_block_size: int = 16,
        num_kv_blocks: int | None = None,  # None: max_slots × context_length worth of blocks
        think_start: str | None = "<think>",  # None: not a thinking model
        think_end: str | None = "</think>",
        answer_phrase: str | None = None,  # a plain-text reasoner's (QVQ: "**Final Answer**"); wins over think tokens
        speech: SpeechModel | Qwen3SpeechModel | None = None,  # the model speaks
        admission: AdmissionPolicy | None = None,  # None: "reserve" for a model that speaks, else "preempt"
        export_speech: bool = False,  # `speech`'s talker runs elsewhere: hand out SpeechFeeds
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = min(context_length, model.config.max_position_embeddings)
        self.cache = model.make_paged_cache(max_slots, self.context_length, kv_block_size, num_kv_blocks)
        self.runner = ModelRunner(model, self.cache)
        # the thinker's side of speech (what it keeps for the talker) and the talker's (here, or exported)
        self.speech_states: FinalHiddenStates | LayerHiddenStates | None = None
        self.speech: SpeechStage | Qwen3SpeechStage | SpeechExport | None = None
        if speech is not None:
            self.speech_states = speech.thinker_states(model, kv_positions=self.cache.num_blocks * kv_block_size,
                                                       block_size=kv_block_size)
            self.speech = SpeechExport() if export_speech else speech.make_stage(
                model.model.embed_tokens, max_streams=max_slots, context_length=self.context_length)
        if self.speech is not None and admission == "preempt":
            raise ValueError("a model that speaks needs admission 'reserve': a talker stream cannot be recomputed")
        self.scheduler = Scheduler(self.cache, prefill_chunk_tokens,
                                   admission or ("reserve" if self.speech else "preempt"),
                                   self.speech.talker_cache if self.speech else None)
        # what one request can hold: the context, or every block when there are fewer
        self.max_request_tokens = min(self.context_length, self.cache.num_blocks * kv_block_size)
        self.answer_phrase = AnswerPhrase(answer_phrase, tuple(tokenizer.encode(forced_answer_text(answer_phrase)))) \
            if answer_phrase else None
        self.think_markers = None if self.answer_phrase else self._find_think_markers(think_start, think_end)
        self.grammars = GrammarVocabulary(tokenizer, model.config.vocab_size)
        self.speaking: list[Request] = []  # replies done, speech still going (talker rows held)
        self._ready: list[RequestOutput] = []  # outputs decided outside a step (abort), sent by the next
        self._in_step = False
        self.steps_run = 0
        self.num_computed_tokens = 0  # tokens run through the model, all requests together
        self.num_computed_prompt_tokens = 0  # of those, prompt tokens (cached ones are not computed)
        self._token_text_cache: dict[int, tuple[str, bytes]] = {}

    # requests

    def add_request(
        self,
        request_id: str,
        prompt: Sequence[int] | PreparedPrompt,
        sampling: SamplingParams,
        thinking_budget: int | None = None,
        stop_token_ids: Sequence[int] = (),
        voice: Voice | None = None,
        min_thinking_tokens: int = 0,
        output: OutputFormat | None = None,
        grammar: Grammar | None = None,
    ) -> None:
        """Queue a request; EngineError when it cannot be served (the caller's 400).
        prompt: token ids, or a multimodal prompt a model family's prompt builder prepared.
        thinking_budget / min_thinking_tokens: at most / at least this many sampled thinking
        tokens (engine/thinking.py). voice: speak the reply in this voice (a model that speaks only).
        output: the grammar the reply follows and whether tool calls are parsed out of it
        (engine/tool_calls.py); grammar: that grammar already compiled (else it is compiled here)."""
        prepared = prompt if isinstance(prompt, PreparedPrompt) else None
        prompt_ids = prepared.input_ids if prepared else [int(t) for t in prompt]
        self._check(request_id, prompt_ids, sampling, thinking_budget, voice)
        if min_thinking_tokens < 0 or (thinking_budget is not None and min_thinking_tokens > thinking_budget):
            raise EngineError("min_thinking_tokens must be >= 0 and at most the thinking budget",
                              param="min_thinking_tokens")
        if min_thinking_tokens and self.answer_phrase is not None:
            # its answer phrase is ordinary text, written before it can be recognised: not suppressible
            raise EngineError("min_thinking_tokens is not supported by this model: it reasons in plain text and "
                              f"answers after {self.answer_phrase.text!r}, which cannot be held back",
                              param="min_thinking_tokens")
        room = self.max_request_tokens - len(prompt_ids)
        if grammar is None and output is not None and output.grammar:
            grammar = self.grammars.compile(output.grammar, output.param)
        request = Request(
            request_id=request_id,
            prompt_ids=prompt_ids,
            sampling=sampling,
            max_new_tokens=min(sampling.max_tokens or room, room),
            stop_token_ids=self.tokenizer.stop_token_ids | frozenset(stop_token_ids),
            detokenizer=Detokenizer(self._text_bytes, sampling.stop,
                                    self.answer_phrase.text if self.answer_phrase else None),
            generator=make_generator(sampling.seed),
            token_text=self._token_text,
            thinking=self._tracker(prompt_ids, thinking_budget, min_thinking_tokens),
            prepared=prepared.prompt if prepared else None,
            voice=voice,
            grammar=grammar,
            tool_parser=ToolCallParser() if output and output.tool_calls else None,
            audio_prompt_tokens=prepared.audio_tokens if prepared else 0,
            image_prompt_tokens=prepared.image_tokens if prepared else 0,
        )
        if prepared is not None:
            request.blocks.media_spans = prepared.media_spans
        request.force_at_start()
        if request.finished:  # the forced tokens alone used up max_tokens
            request.speech_done = True  # nothing was said
            self._ready.append(request.take_output())
            return
        self.scheduler.add(request)

    def _tracker(self, prompt_ids: list[int], budget: int | None,
                 minimum: int) -> ThinkingTracker | PlainReasoningTracker | None:
        if self.answer_phrase is not None:
            return PlainReasoningTracker(self.answer_phrase, budget)
        return ThinkingTracker(self.think_markers, budget, prompt_ids, minimum) if self.think_markers else None

    def _check(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams,
               thinking_budget: int | None, voice: Voice | None) -> None:
        if self.find(request_id) is not None:
            raise EngineError(f"request id {request_id!r} is already running", param="request_id")
        if not prompt_ids:
            raise EngineError("the prompt is empty", param="messages")
        if len(prompt_ids) >= self.max_request_tokens:
            raise EngineError(f"The prompt is {len(prompt_ids)} tokens; this model's context is "
                              f"{self.max_request_tokens} tokens, prompt and completion included.",
                              param="messages", code="context_length_exceeded")
        if sampling.max_tokens is not None and sampling.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1", param="max_tokens")
        if sampling.max_tokens is not None and len(prompt_ids) + sampling.max_tokens > self.max_request_tokens:
            raise EngineError(f"max_tokens {sampling.max_tokens} + prompt {len(prompt_ids)} tokens exceeds the "
                              f"context length {self.max_request_tokens}.", param="max_tokens",
                              code="context_length_exceeded")
        if thinking_budget is not None and thinking_budget < 0:
            raise EngineError("the thinking budget must be >= 0", param="max_thinking_tokens")
        if voice is not None and self.speech is None:
            raise EngineError("this model cannot speak: its checkpoint has no talker", param="modalities")

    def find(self, request_id: str) -> Request | None:
        found = self.scheduler.find(request_id)
        return found or next((r for r in self.speaking if r.request_id == request_id), None)

    def abort(self, request_id: str) -> bool:
        """Stop a request now; its rows and blocks are free at once, the next step reports finish "abort"."""
        request = self.find(request_id)
        if request is None:
            return False
        request.finish("abort")
        self._drop(request)
        self._ready.append(request.take_output())
        return True

    def fail(self, request: Request, error: BaseException) -> None:
        """The request alone failed (its speech, a bug in its work): it ends now with the error,
        reported by this step or, outside one, the next."""
        if request.done:
            return
        request.fail(error)
        self._drop(request)
        if not self._in_step:
            self._ready.append(request.take_output())

    def fail_all(self, error: BaseException) -> None:
        """A step failed outside any one request (a bug): every request gets the error."""
        for request in [*self.scheduler.running, *self.scheduler.waiting, *self.speaking]:
            self.fail(request, error)

    def _drop(self, request: Request) -> None:
        self.scheduler.remove(request)
        if request in self.speaking:
            self.speaking.remove(request)
        self.scheduler.release_talker(request)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.speaking) or bool(self._ready)

    @property
    def num_free_slots(self) -> int:
        """How many more requests could run now (block-table rows not taken by running ones)."""
        return self.scheduler.num_free_rows

    # the step

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        self.steps_run += 1
        self._in_step = True
        try:
            return self._step()
        finally:
            self._in_step = False

    def _step(self) -> list[RequestOutput]:
        outputs, self._ready = self._ready, []
        plan = self.scheduler.schedule()
        reporting = [*self.scheduler.running, *self.speaking]  # whose outputs this step hands out
        if self.speech is not None:
            self._open_speech()
        if not plan.empty:
            due, logits = self._run(plan)
            self._sample(due, logits)
        self._end_replies()
        if self.speech is not None:
            self.speech.step([r for r in [*self.scheduler.running, *self.speaking] if r.speech is not None], self.fail)
        return outputs + self._take_outputs(reporting)

    def _open_speech(self) -> None:
        for request in self.scheduler.running:
            if request.voice is not None and request.speech is None:
                self.speech.open(request)  # just admitted with a talker row

    def _run(self, plan: StepPlan) -> tuple[list[Request], torch.Tensor]:
        """ONE forward for the plan's decodes and prefill chunks; the requests whose next token
        is due and their logits."""
        work = [Work(r, r.num_computed, r.num_computed + 1) for r in plan.decodes]
        work += [Work(chunk.request, chunk.start, chunk.end) for chunk in plan.prefills]
        hidden = self.runner.run(work)  # [rows, width, H]
        self._computed(work, hidden)
        due, logits = self.runner.logits(work, hidden)
        if any(request.failed for request in due):  # failed in `_computed`: nothing more to sample
            kept = [i for i, request in enumerate(due) if not request.failed]
            due, logits = [due[i] for i in kept], logits[kept]
        return due, logits

    def _sample(self, due: list[Request], logits: torch.Tensor) -> None:
        """One sampling call for every due request; each takes its token (text, stop, limits)."""
        if due:
            samples = sample(logits, [request.sampling_row() for request in due])
            for request, token in zip(due, samples):
                guarded(request, self.fail, request.append_sampled, token)

    def _end_replies(self) -> None:
        """Finished replies give their thinker rows and blocks back; a spoken one speaks on."""
        for request in list(self.scheduler.running):
            if request.finished:
                self.scheduler.remove(request)
                if not request.done:
                    self.speaking.append(request)

    def _take_outputs(self, requests: list[Request]) -> list[RequestOutput]:
        outputs = []
        for request in requests:
            output = request.take_output()
            if isinstance(request.speech, ExportedSpeech) and (feed := request.speech.take()) is not None:
                output = replace(output or RequestOutput(request.request_id), speech_feed=feed)
            if request.done:
                self._drop(request)
            if output is not None:
                outputs.append(output)
        return outputs

    def _computed(self, work: list[Work], hidden: torch.Tensor) -> None:
        """After the forward: the rows' tokens are in the cache; a model that speaks keeps
        their hidden states and feeds its talkers."""
        for i, w in enumerate(work):
            self.scheduler.computed(w.request, w.end)
            self.num_computed_tokens += w.size
            self.num_computed_prompt_tokens += max(0, min(w.end, len(w.request.prompt_ids)) - w.start)
            if self.speech_states is not None:
                guarded(w.request, self.fail, self.speech_states.computed, w.request, w.start, w.end,
                        hidden[i, : w.size], self.cache.block_size)

    # tokenizer helpers

    def _text_bytes(self, token_id: int) -> bytes:
        """What a generated token adds to the text: nothing for control tokens like <|im_start|>."""
        return b"" if self.tokenizer.is_special(token_id) else self.tokenizer.token_bytes(token_id)

    def _token_text(self, token_id: int) -> tuple[str, bytes]:
        """(text, raw bytes) of one token, for logprobs; a partial character shows as U+FFFD."""
        cached = self._token_text_cache.get(token_id)
        if cached is None:
            data = self.tokenizer.token_bytes(token_id)
            cached = self._token_text_cache[token_id] = (data.decode("utf-8", errors="replace"), data)
        return cached

    def _find_think_markers(self, start: str | None, end: str | None) -> ThinkMarkers | None:
        """Think markers when the vocabulary has both as single tokens, else None (no thinking)."""
        if start is None or end is None:
            return None
        start_ids, end_ids = self.tokenizer.encode(start), self.tokenizer.encode(end)
        if len(start_ids) != 1 or len(end_ids) != 1:
            return None  # e.g. Qwen2.5: "<think>" is plain text there, not a marker
        start_id, end_id = start_ids[0], end_ids[0]
        exhausted = tuple(self.tokenizer.encode(BUDGET_EXHAUSTED_TEXT))
        no_thinking = tuple(self.tokenizer.encode(NO_THINKING_TEXT))
        for ids in (exhausted, no_thinking):
            if end_id not in ids:
                raise ValueError(f"{end!r} is not one token when it ends the forced text: {ids}")
        return ThinkMarkers(start_id, end_id, exhausted, no_thinking, tuple(self.tokenizer.encode(THINK_LONGER_TEXT)))
