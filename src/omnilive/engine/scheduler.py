"""Continuous batching over a paged KV cache: who runs, what each computes this step.

Every step plans a decode for all requests that miss exactly one token, plus prefill chunks
(a prompt, or forced tokens) within a token budget shared by the prefilling requests, oldest
first, so a long prompt never stalls the streams already decoding; the engine runs them all
in one forward.

A running request holds a block-table row of the cache and blocks for every token it has
or is about to compute (the BlockManager shares cached prefix blocks between requests). A
waiting request is admitted, oldest first, when a row is free and blocks for all its tokens
are; it then skips computing its cached prefix. What happens when blocks run short is the
admission policy:
- "preempt": a request is admitted with a block to spare per running request; when a
  running request needs a new block and none is free, the newest running request is
  preempted: it gives its blocks back and waits at the front of the queue to be recomputed
  (mostly from its own blocks, which stay cached unless evicted meanwhile).
- "reserve": a request is admitted only if the blocks every admitted request may still grow
  into (its whole reply) stay free, so none is ever preempted: what a spoken request needs,
  whose talker stream cannot be recomputed.
A spoken request also needs a talker row (`talker_rows`, held until its speech ends, past its
reply); one that finds none stays first in line, but the requests behind it that fit go
first: text replies are not held up behind speech.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from omnilive.engine.block_manager import BlockManager
from omnilive.engine.request import Request
from omnilive.model.kv_cache import KVCache, PagedKVCache

AdmissionPolicy = Literal["preempt", "reserve"]


@dataclass(frozen=True)
class PrefillChunk:
    request: Request
    start: int  # token index (= position) of the first token to compute
    end: int  # one past the last; the chunk yields logits when end == len(token_ids)


@dataclass
class StepPlan:
    decodes: list[Request] = field(default_factory=list)  # each misses exactly one token
    prefills: list[PrefillChunk] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.decodes or self.prefills)


class Scheduler:
    def __init__(self, cache: PagedKVCache, prefill_chunk_tokens: int = 256, admission: AdmissionPolicy = "preempt",
                 talker_rows: KVCache | None = None):
        self.cache = cache
        self.blocks = BlockManager(cache.num_blocks, cache.block_size)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.admission = admission
        self.talker_rows = talker_rows
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.num_preemptions = 0

    @property
    def num_free_rows(self) -> int:
        return self.cache.num_free_rows

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def find(self, request_id: str) -> Request | None:
        for request in (*self.running, *self.waiting):
            if request.request_id == request_id:
                return request
        return None

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.prefill_chunk_tokens
        preempted = False
        for request in list(self.running):
            if request.row is None:
                continue  # preempted earlier in this loop
            size = self._tokens_to_compute(request, budget)
            if not size:
                continue
            if not self._grow(request, request.num_computed + size):
                preempted = True
                continue
            budget -= self._plan(plan, request, size)
        if preempted:
            return plan  # admitting now would only take blocks the running requests need
        for request in self._admit_waiting():
            size = self._tokens_to_compute(request, budget)
            if size:
                budget -= self._plan(plan, request, size)
        return plan

    def computed(self, request: Request, num_computed: int) -> None:
        """The model has computed the request's tokens up to `num_computed`."""
        request.num_computed = num_computed
        self.blocks.commit(request.blocks, request.token_ids, num_computed)

    def remove(self, request: Request) -> None:
        """Take a finished or aborted request out; its blocks and row are free at once (its
        talker row too, unless it still speaks: `release_talker` then)."""
        if request in self.waiting:
            self.waiting.remove(request)
        elif request in self.running:
            self.running.remove(request)
            self._release(request)
        if request.done:
            self.release_talker(request)

    def release_talker(self, request: Request) -> None:
        if request.talker_slot is not None:
            self.talker_rows.free(request.talker_slot)
            request.talker_slot = None

    def blocks_needed(self, request: Request) -> int:
        """Blocks the request holds at most: its prompt and every reply token fed back (all but the last)."""
        return self.blocks.blocks_for(len(request.prompt_ids) + max(request.max_new_tokens - 1, 0))

    # internals

    def _tokens_to_compute(self, request: Request, budget: int) -> int:
        missing = request.num_uncomputed
        if missing == 1:
            return 1
        return min(missing, budget) if missing > 1 and budget > 0 else 0

    def _plan(self, plan: StepPlan, request: Request, size: int) -> int:
        """Add the request's work to the plan; returns the prefill budget it used."""
        if request.num_uncomputed == 1:
            plan.decodes.append(request)
            return 0
        plan.prefills.append(PrefillChunk(request, request.num_computed, request.num_computed + size))
        return size

    def _grow(self, request: Request, num_tokens: int) -> bool:
        """Blocks for the request's positions < num_tokens, preempting newer requests if
        needed; False when the request itself had to be preempted."""
        table = request.blocks
        while True:
            before = len(table.block_ids)
            if self.blocks.grow(table, num_tokens):
                self.cache.set_blocks(request.row, before, table.block_ids[before:])
                return True
            if self.admission == "reserve":
                raise RuntimeError(f"no KV block for request {request.request_id}: the reservation is wrong")
            victim = self.running[-1]
            self._preempt(victim)
            if victim is request:
                return False

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self._release(request)
        request.num_computed = 0
        self.waiting.appendleft(request)
        self.num_preemptions += 1

    def _release(self, request: Request) -> None:
        if request.row is None:
            return
        self.blocks.release(request.blocks)
        self.cache.free_row(request.row)
        request.row = None

    def _admit_waiting(self) -> list[Request]:
        admitted = []
        for request in list(self.waiting):
            if not self.cache.num_free_rows:
                break
            speaks_here = request.voice is not None and self.talker_rows is not None  # else its talker is elsewhere
            if speaks_here and not self.talker_rows.num_free:
                continue  # it keeps its place; those behind it that fit go first
            cached = self.blocks.admit(request.blocks, request.token_ids, keep_free=self._keep_free(request))
            if cached is None:
                break  # it goes first once blocks are freed; so do those behind it
            self.waiting.remove(request)
            if speaks_here:
                request.talker_slot = self.talker_rows.allocate()
            request.row = self.cache.allocate_row()
            self.cache.set_blocks(request.row, 0, request.blocks.block_ids)
            request.num_computed = cached
            if request.num_cached is None:  # the first admission; a recompute after preemption is not reuse
                request.num_cached = cached
            self.running.append(request)
            admitted.append(request)
        return admitted

    def _keep_free(self, request: Request) -> int:
        """Blocks admitting `request` must leave free."""
        if self.admission == "preempt":  # one to spare per running request: they can grow without preempting it at once
            return len(self.running)
        reserved = sum(self.blocks_needed(r) - len(r.blocks.block_ids) for r in self.running)
        return reserved + self.blocks_needed(request) - self.blocks.blocks_for(len(request.token_ids))
