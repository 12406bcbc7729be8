"""Continuous batching over a paged KV cache: who runs, what each computes this step.

Every step plans a decode for all requests that miss exactly one token, plus prefill chunks
(a prompt, or forced tokens) within a token budget shared by the prefilling requests, oldest
first, so a long prompt never stalls the streams already decoding; the engine runs them all
in one forward.

A running request holds a block-table row of the cache and blocks for every token it has
or is about to compute (the BlockManager shares cached prefix blocks between requests). A
waiting request is admitted, oldest first, when a row is free and blocks for all its tokens
are; it then skips computing its cached prefix. When a running request needs a new block
and none is free, the newest running request is preempted: it gives its blocks back and
waits at the front of the queue to be recomputed (mostly from its own blocks, which stay
cached unless evicted meanwhile).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from omnilive.engine.block_manager import BlockManager
from omnilive.model.kv_cache import PagedKVCache
from omnilive.engine.request import Request


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
    def __init__(self, cache: PagedKVCache, prefill_chunk_tokens: int = 256):
        self.cache = cache
        self.blocks = BlockManager(cache.num_blocks, cache.block_size)
        self.prefill_chunk_tokens = prefill_chunk_tokens
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
        """Take a finished or aborted request out; its blocks and row are free at once."""
        if request in self.waiting:
            self.waiting.remove(request)
            return
        self.running.remove(request)
        self._release(request)

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
        while self.waiting and self.cache.num_free_rows:
            request = self.waiting[0]
            # one block to spare per running request, so they can grow without preempting it at once
            cached = self.blocks.admit(request.blocks, request.token_ids, keep_free=len(self.running))
            if cached is None:
                break
            self.waiting.popleft()
            request.row = self.cache.allocate_row()
            self.cache.set_blocks(request.row, 0, request.blocks.block_ids)
            request.num_computed = cached
            if request.num_cached is None:  # the first admission; a recompute after preemption is not reuse
                request.num_cached = cached
            self.running.append(request)
            admitted.append(request)
        return admitted
