"""Continuous batching: which requests get a KV slot, and what each computes this step.

Every step runs one batched decode for all requests that miss exactly one token, plus
prefill chunks (a prompt, or forced tokens) within a token budget shared by the prefilling
requests, oldest first, so a long prompt never stalls the streams already decoding.

Prefix reuse: a finished request's slot keeps its keys/values and the tokens they belong
to. A new request takes the idle slot sharing the longest token prefix with its prompt and
skips computing that prefix; when the best prefix sits in a running request's slot, its
keys/values are copied into the new slot instead. Stale entries past the reused prefix
need no clearing: a query only attends to positions <= its own, and those are rewritten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from omnilive.engine.kv_cache import KVCache
from omnilive.engine.request import Request


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SlotPool:
    """Owns the cache slots: running ones, idle ones that still hold a prefix, fresh ones."""

    def __init__(self, cache: KVCache):
        self.cache = cache
        self._idle: OrderedDict[int, list[int]] = OrderedDict()  # slot → tokens it holds, LRU first

    @property
    def num_available(self) -> int:
        return self.cache.num_free + len(self._idle)

    def acquire(self, prompt_ids: Sequence[int], running: Iterable[Request]) -> tuple[int, int] | None:
        """(slot, number of prompt tokens already in it), or None when every slot is busy."""
        # Keep at least the last prompt token to compute: its logits give the first output token.
        usable = len(prompt_ids) - 1
        best_idle, idle_len = None, 0
        for slot, tokens in self._idle.items():
            n = min(common_prefix_length(tokens, prompt_ids), usable)
            if n > idle_len:
                best_idle, idle_len = slot, n
        source, source_len = None, 0
        for request in running:
            n = min(common_prefix_length(request.token_ids[: request.num_computed], prompt_ids), usable)
            if n > source_len:
                source, source_len = request.slot, n
        if best_idle is not None and idle_len >= source_len:
            del self._idle[best_idle]
            return best_idle, idle_len
        if self.cache.num_free:
            slot = self.cache.allocate()
        elif self._idle:
            slot, _ = self._idle.popitem(last=False)  # evict the least recently used prefix
        else:
            return None
        if source is not None and source_len:
            self._copy_prefix(source, slot, source_len)
            return slot, source_len
        return slot, 0

    def release(self, slot: int, computed_token_ids: list[int]) -> None:
        self._idle[slot] = computed_token_ids
        self._idle.move_to_end(slot)

    def _copy_prefix(self, source: int, target: int, length: int) -> None:
        # k, v: [layers, slots, kv_heads, max_len, head_dim]
        self.cache.k[:, target, :, :length].copy_(self.cache.k[:, source, :, :length])
        self.cache.v[:, target, :, :length].copy_(self.cache.v[:, source, :, :length])


@dataclass(frozen=True)
class PrefillChunk:
    request: Request
    start: int  # token index (= position) of the first token to compute
    end: int  # one past the last; the chunk yields logits when end == len(token_ids)

    @property
    def completes(self) -> bool:
        return self.end == len(self.request.token_ids)


@dataclass
class StepPlan:
    decodes: list[Request] = field(default_factory=list)  # each misses exactly one token
    prefills: list[PrefillChunk] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.decodes or self.prefills)


class Scheduler:
    def __init__(self, pool: SlotPool, prefill_chunk_tokens: int = 256):
        self.pool = pool
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order

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
        self._admit_waiting()
        plan = StepPlan()
        budget = self.prefill_chunk_tokens
        for request in self.running:
            missing = request.num_uncomputed
            if missing == 1:
                plan.decodes.append(request)
            elif missing > 1 and budget > 0:
                size = min(missing, budget)
                plan.prefills.append(PrefillChunk(request, request.num_computed, request.num_computed + size))
                budget -= size
        return plan

    def remove(self, request: Request) -> None:
        """Take a finished or aborted request out; its slot becomes reusable at once."""
        if request in self.waiting:
            self.waiting.remove(request)
            return
        self.running.remove(request)
        if request.slot is not None:
            self.pool.release(request.slot, request.token_ids[: request.num_computed])
            request.slot = None

    def _admit_waiting(self) -> None:
        while self.waiting:
            request = self.waiting[0]
            acquired = self.pool.acquire(request.prompt_ids, self.running)
            if acquired is None:
                return
            self.waiting.popleft()
            request.slot, request.num_cached = acquired
            request.num_computed = request.num_cached
            self.running.append(request)
