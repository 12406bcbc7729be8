"""The synchronous LLM engine: add requests, call `step()` until `has_work()` is False.

One step = schedule (pick decodes and prefill chunks, grow block tables, admit waiting
requests) → one forward for the decoding rows and the prefill chunks together → one batched
sampling call for every request whose next token is due → detokenise, check stop conditions, free
finished requests' blocks.

The KV cache is paged (see block_manager.py): requests whose prompts share a prefix with a
running or finished request (a system prompt, the earlier turns of a chat) reference its
blocks instead of computing them again. Its memory is that of `max_slots` rows of
`context_length` tokens unless `num_kv_blocks` says otherwise.

Not thread-safe: `AsyncLLM` calls it from a single thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from omnilive.engine.detokenizer import Detokenizer
from omnilive.engine.request import (
    BUDGET_EXHAUSTED_TEXT,
    NO_THINKING_TEXT,
    LLMOutput,
    Request,
    ThinkingTracker,
    ThinkMarkers,
)
from omnilive.engine.sampling import make_generator, sample
from omnilive.engine.scheduler import Scheduler, StepPlan
from omnilive.types import EngineError, SamplingParams
from omnilive.model.qwen2 import Qwen2ForCausalLM

StepOutput = LLMOutput  # what step() returns per request: the deltas of that step


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
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = min(context_length, model.config.max_position_embeddings)
        self.cache = model.make_paged_cache(max_slots, self.context_length, kv_block_size, num_kv_blocks)
        self.scheduler = Scheduler(self.cache, prefill_chunk_tokens)
        # what one request can hold: the context, or every block when there are fewer
        self.max_request_tokens = min(self.context_length, self.cache.num_blocks * kv_block_size)
        self.think_markers = self._find_think_markers(think_start, think_end)
        self._ready: list[LLMOutput] = []  # outputs decided outside a step (abort), sent by the next
        self.steps_run = 0
        self.num_computed_tokens = 0  # tokens run through the model, all requests together
        self._token_text_cache: dict[int, tuple[str, bytes]] = {}

    # requests

    def add_request(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        thinking_budget: int | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        if self.scheduler.find(request_id) is not None:
            raise EngineError(f"request id {request_id!r} is already running", param="request_id")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise EngineError("the prompt is empty", param="messages")
        if len(prompt) >= self.max_request_tokens:
            raise EngineError(
                f"the prompt has {len(prompt)} tokens; this engine's context is {self.max_request_tokens} tokens, "
                "prompt and completion included",
                param="messages",
                code="context_length_exceeded",
            )
        if sampling.max_tokens is not None and sampling.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1", param="max_tokens")
        if thinking_budget is not None and thinking_budget < 0:
            raise EngineError("the thinking budget must be >= 0", param="max_thinking_tokens")
        room = self.max_request_tokens - len(prompt)
        request = Request(
            request_id=request_id,
            prompt_ids=prompt,
            sampling=sampling,
            max_new_tokens=min(sampling.max_tokens or room, room),
            stop_token_ids=self.tokenizer.stop_token_ids | frozenset(stop_token_ids),
            detokenizer=Detokenizer(self._text_bytes, sampling.stop),
            generator=make_generator(sampling.seed),
            token_text=self._token_text,
            thinking=ThinkingTracker(self.think_markers, thinking_budget, prompt) if self.think_markers else None,
        )
        request.force_at_start()
        if request.finished:  # the forced tokens alone used up max_tokens
            self._ready.append(request.take_output())
            return
        self.scheduler.add(request)

    def abort(self, request_id: str) -> bool:
        """Stop a request now; its row and blocks are free at once, the next step reports finish "abort"."""
        request = self.scheduler.find(request_id)
        if request is None:
            return False
        request.finish("abort")
        self.scheduler.remove(request)
        self._ready.append(request.take_output())
        return True

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._ready)

    @property
    def num_free_slots(self) -> int:
        """How many more requests could run now (block-table rows not taken by running ones)."""
        return self.scheduler.num_free_rows

    # the step

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        self.steps_run += 1
        outputs, self._ready = self._ready, []
        plan = self.scheduler.schedule()
        if not plan.empty:
            due, logits = self._run(plan)
            if due:
                samples = sample(logits, [request.sampling_row() for request in due])
                for request, token in zip(due, samples):
                    request.append_sampled(token)
        for request in list(self.scheduler.running):
            output = request.take_output()
            if request.finished:
                self.scheduler.remove(request)
            if output is not None:
                outputs.append(output)
        return outputs

    def _run(self, plan: StepPlan) -> tuple[list[Request], torch.Tensor]:
        """One forward for every decoding row and prefill chunk of the step (the weights are
        read once: a decode step's cost on a CPU); returns the requests whose next token is due
        and their logits [len(due), V].

        Rows are right-padded to the longest chunk; the model runs only real tokens.
        """
        work = [(r, r.num_computed, r.num_computed + 1) for r in plan.decodes]
        work += [(chunk.request, chunk.start, chunk.end) for chunk in plan.prefills]
        width = max(end - start for _, start, end in work)
        input_ids = torch.zeros((len(work), width), dtype=torch.long)
        positions = torch.full((len(work), width), -1, dtype=torch.long)
        for i, (request, start, end) in enumerate(work):
            input_ids[i, : end - start] = torch.tensor(request.token_ids[start:end])
            positions[i, : end - start] = torch.arange(start, end)
        device = self.model.device
        rows = torch.tensor([request.row for request, _, _ in work], dtype=torch.long, device=device)
        hidden = self.model(input_ids.to(device), positions.to(device), self.cache, rows)  # [rows, width, H]
        due, last = [], []  # a row's next token is due once its chunk reaches its last token
        for i, (request, start, end) in enumerate(work):
            self.scheduler.computed(request, end)
            self.num_computed_tokens += end - start
            if end == len(request.token_ids):
                due.append(request)
                last.append(i * width + end - start - 1)
        if not due:
            return due, hidden.new_empty(0)
        states = hidden.view(-1, hidden.shape[-1])[torch.tensor(last, device=device)]  # [len(due), H]
        return due, self.model.compute_logits(states)

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
        return ThinkMarkers(start_id, end_id, exhausted, no_thinking)
