"""The state of one generation request inside the engine, and what a step reports about it.

A request's tokens are `token_ids` = prompt + output. `num_computed` of them have their keys
and values in the request's KV cache blocks (`blocks`, read through block-table `row`
while it runs); the rest are computed by the next step(s) (a prefill
chunk when several are missing, a decode when one is), and the logits of the last one give
the next token. Forced tokens (thinking budget) are appended as output without sampling, so
they are computed like a short prefill.

A multimodal request carries its `prepared` prompt: the embeddings with its media merged in,
its M-RoPE ids and, for Qwen3-VL, its DeepStack features (the runner feeds those for prompt
positions, token embeddings for the rest). A spoken request carries a `voice`; once admitted
it holds a talker row and a `speech` stream, and it is `done` only when its speech has ended
too, after its reply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from omnilive.engine.block_manager import BlockTable, MediaSpan
from omnilive.engine.detokenizer import Detokenizer, TextDeltas
from omnilive.engine.grammar import Grammar
from omnilive.engine.sampling import SamplingRow, TokenSample
from omnilive.engine.speech import SpeechStream
from omnilive.engine.thinking import Channel, PlainReasoningTracker, ThinkingTracker
from omnilive.engine.tool_calls import ToolCallParser
from omnilive.model.thinker import ThinkerPrompt
from omnilive.model.token2wav import Voice
from omnilive.types import AudioChunk, EngineError, FinishReason, SamplingParams, TokenLogprob, ToolCallDelta

if TYPE_CHECKING:  # speech_export imports this module
    from omnilive.engine.speech_export import ExportedSpeech, SpeechFeed


@dataclass(frozen=True)
class PreparedPrompt:
    """A multimodal prompt ready for the engine: what a model family's prompt builder gives."""

    prompt: ThinkerPrompt  # token ids, embeddings with the media merged in, M-RoPE ids, DeepStack features
    media_spans: tuple[MediaSpan, ...] = ()  # the media behind placeholder runs: part of the block keys
    audio_tokens: int = 0  # audio placeholders (usage)
    image_tokens: int = 0  # image and video placeholders (usage)

    @property
    def input_ids(self) -> list[int]:
        return self.prompt.input_ids.tolist()


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request (deltas since the previous output)."""

    request_id: str
    text: str = ""  # content delta
    reasoning: str = ""  # reasoning delta (inside <think>, or before a plain-text reasoner's answer phrase)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per sampled content token
    tool_calls: tuple[ToolCallDelta, ...] = ()  # tool-call pieces parsed out of the content
    token_ids: tuple[int, ...] = ()  # new output tokens (sampled and forced)
    audio: tuple[AudioChunk, ...] = ()  # speech that became final, in order
    finish_reason: FinishReason | None = None  # set once the request is done (its speech too)
    error: EngineError | None = None  # the request failed alone (finish_reason "abort")
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far, reasoning included
    reasoning_tokens: int = 0  # total so far: tokens inside think blocks, markers included (plain-text
    # reasoners: every token up to the one that completes the answer phrase)
    cached_prompt_tokens: int = 0  # prompt tokens whose KV was reused, not recomputed
    audio_prompt_tokens: int = 0  # of prompt_tokens, audio placeholders
    image_prompt_tokens: int = 0  # of prompt_tokens, image and video placeholders
    speech_feed: SpeechFeed | None = None  # for a speech stage elsewhere (LLMEngine(export_speech=True))

    @property
    def finished(self) -> bool:
        """The request is over (its speech too): nothing more will come."""
        return self.finish_reason is not None


@dataclass(eq=False)  # identity: requests are compared by `is`, never by value
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int  # max_tokens, or what the context leaves
    stop_token_ids: frozenset[int]  # EOS and extra stop ids: finish "stop", not shown as text
    detokenizer: Detokenizer
    generator: torch.Generator
    token_text: Callable[[int], tuple[str, bytes]]  # for logprobs
    thinking: ThinkingTracker | PlainReasoningTracker | None = None
    prepared: ThinkerPrompt | None = None  # a multimodal prompt: embeddings, M-RoPE ids (, DeepStack)
    voice: Voice | None = None  # None: text only
    grammar: Grammar | None = None  # the reply's content must follow it (constrained decoding)
    tool_parser: ToolCallParser | None = None  # tool calls are parsed out of the content
    audio_prompt_tokens: int = 0
    image_prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int | None = None  # prompt tokens found in the cache at (first) admission
    row: int | None = None  # the cache's block-table row while running
    blocks: BlockTable = field(default_factory=BlockTable)
    reasoning_tokens: int = 0
    finish_reason: FinishReason | None = None  # the reply's end
    talker_slot: int | None = None  # the talker cache row while it speaks
    speech: SpeechStream | ExportedSpeech | None = None
    speech_done: bool = False
    error: EngineError | None = None
    # what this step produced, handed out (and reset) by take_output()
    audio: list[AudioChunk] = field(default_factory=list)
    _deltas: TextDeltas = field(default_factory=TextDeltas)
    _logprobs: list[TokenLogprob] = field(default_factory=list)
    _tool_calls: list[ToolCallDelta] = field(default_factory=list)
    _new_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def finished(self) -> bool:
        """The reply has ended (its speech may go on)."""
        return self.finish_reason is not None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def done(self) -> bool:
        """Nothing more will come: the reply ended and so did its speech, if any."""
        return self.finished and (self.voice is None or self.speech_done or self.failed
                                  or self.finish_reason == "abort")

    def sampling_row(self) -> SamplingRow:
        return SamplingRow(self.sampling, self.generator, self.token_ids, len(self.prompt_ids), self._allowed())

    def _allowed(self) -> torch.Tensor | None:
        """The grammar's mask for the next token; none inside a think block (reasoning is free),
        and the think marker stays allowed while the model may still open one."""
        if self.grammar is None or (self.thinking is not None and self.thinking.inside):
            return None
        mask = self.grammar.allowed()
        if self.thinking is not None and self.thinking.may_open:
            start = self.thinking.markers.start_id
            mask[start // 32] |= torch.tensor(1 << (start % 32), dtype=torch.int64).to(torch.int32)
        return mask

    def force_at_start(self) -> None:
        if self.thinking is not None:
            self._append_forced(self.thinking.tokens_to_force_at_start())

    def append_sampled(self, sample: TokenSample) -> None:
        """Add the token drawn from the logits after our last token, then any forced ones."""
        if self.thinking is not None and (instead := self.thinking.instead_of(sample.token_id)) is not None:
            self._append_forced(instead)  # it ended its thinking too soon: it thinks on
            return
        forced = self._append(sample.token_id, sample, forced=False)
        self._append_forced(forced)

    def finish(self, reason: FinishReason) -> None:
        if self.finished:
            return
        self.finish_reason = reason
        if reason != "abort":
            self._add_deltas(self.detokenizer.finish())
            if self.tool_parser is not None:
                text, calls = self.tool_parser.finish()
                self._content(text, calls)
                if reason == "stop" and self.tool_parser.calls:
                    self.finish_reason = "tool_calls"
        if self.speech is not None:
            self.speech.finish_text()

    def fail(self, error: BaseException) -> None:
        """This request alone failed (a bad media item, a bug in its speech): it ends now."""
        if self.error is None:
            self.error = error if isinstance(error, EngineError) else EngineError(f"the engine failed: {error}")
        self.finish_reason = self.finish_reason or "abort"

    def take_output(self) -> RequestOutput | None:
        """The step's deltas for this request, or None when there is nothing to report."""
        done = self.done
        if not (self._new_token_ids or self.audio or done):
            return None
        output = RequestOutput(
            request_id=self.request_id,
            text=self._deltas.content,
            reasoning=self._deltas.reasoning,
            logprobs=tuple(self._logprobs),
            tool_calls=tuple(self._tool_calls),
            token_ids=tuple(self._new_token_ids),
            audio=tuple(self.audio),
            finish_reason=self.finish_reason if done else None,
            error=self.error,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.num_output,
            reasoning_tokens=self.reasoning_tokens,
            cached_prompt_tokens=self.num_cached or 0,
            audio_prompt_tokens=self.audio_prompt_tokens,
            image_prompt_tokens=self.image_prompt_tokens,
        )
        self._deltas, self._logprobs, self._new_token_ids, self.audio = TextDeltas(), [], [], []
        self._tool_calls = []
        return output

    def _add_deltas(self, deltas: TextDeltas) -> None:
        self._deltas.reasoning += deltas.reasoning
        if self.tool_parser is None:
            self._content(deltas.content, [])
        elif deltas.content:
            self._content(*self.tool_parser.feed(deltas.content))

    def _content(self, text: str, calls: list[ToolCallDelta]) -> None:
        self._deltas.content += text
        self._tool_calls += calls
        if self.speech is not None and text:
            self.speech.tell(text)  # the next AudioChunk says it

    def _append_forced(self, token_ids: tuple[int, ...]) -> None:
        for token_id in token_ids:
            if self.finished:
                return
            self._append(token_id, None, forced=True)

    def _append(self, token_id: int, sample: TokenSample | None, forced: bool) -> tuple[int, ...]:
        self.token_ids.append(token_id)
        self._new_token_ids.append(token_id)
        to_force: tuple[int, ...] = ()
        if token_id in self.stop_token_ids and not forced:
            self.finish("stop")
            return ()
        channel: Channel = "content"
        if self.thinking is not None:
            channel, to_force = self.thinking.observe(token_id, forced)
        if channel == "content":
            if self.grammar is not None:
                self.grammar.accept(token_id)
            self._add_deltas(self.detokenizer.add_token(token_id, reasoning=False))
            if sample is not None and sample.logprob is not None:
                self._logprobs.append(self._token_logprob(token_id, sample))
        else:
            self.reasoning_tokens += 1
            if channel == "reasoning":
                self._add_deltas(self.detokenizer.add_token(token_id, reasoning=True))
                if self.detokenizer.answered and self.thinking.inside:
                    # a plain-text reasoner wrote (or was forced) its answer phrase: the answer
                    # begins, and a budget text due at this very token is not needed any more
                    self.thinking.end_reasoning()
                    to_force = ()
            else:
                self._add_deltas(self.detokenizer.switch_channel(reasoning=self.thinking.inside))
        if self.detokenizer.stopped:
            self.finish("stop")
        elif self.num_output >= self.max_new_tokens:
            self.finish("length")
        return () if self.finished else to_force

    def _token_logprob(self, token_id: int, sample: TokenSample) -> TokenLogprob:
        text, data = self.token_text(token_id)
        top = []
        for alt_id, alt_logprob in sample.top:
            alt_text, alt_data = self.token_text(alt_id)
            top.append((alt_text, alt_logprob, tuple(alt_data)))
        return TokenLogprob(token=text, logprob=float(sample.logprob), bytes=tuple(data), top=tuple(top))
