"""Which blocks of the paged KV cache hold which tokens: allocation, sharing, eviction.

A request's tokens live in blocks of `block_size` positions (its BlockTable). Once a block
is full and computed, it gets a key: a hash of (the previous block's key, its token ids,
the media it covers), so equal keys mean equal keys/values. A new request looks its
prompt's full blocks up by key, in order, and *references* every one it finds (ref counts,
no copy) instead of computing it; only the rest is computed, into blocks of its own.

A block is never written while shared: only full blocks are shared, a prompt's prefix that
ends inside a block is recomputed into a fresh block, and at least the last prompt token
is always computed (its logits give the first output token), so a fully cached prompt
gives back its last block.

Blocks nobody references stay cached (findable by key) until a fresh block is needed and
no never-used one is left; then the least recently released cached block is evicted.
A request releases its blocks last to first, so a chain's tail is evicted before its prefix.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaSpan:
    """Prompt tokens [start, end) that stand for one media item (e.g. an image's placeholder
    tokens). Two prompts with the same placeholder tokens share the blocks covering them
    only when their `content_hash`es are equal."""

    start: int
    end: int
    content_hash: Hashable


@dataclass
class BlockTable:
    """The blocks of one request in position order, and the keys of its leading full,
    computed blocks (keys[i] belongs to block_ids[i])."""

    media_spans: tuple[MediaSpan, ...] = ()
    block_ids: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)


@dataclass
class _Block:
    ref_count: int = 0
    key: int | None = None  # set once the block is full, computed and findable
    parent: int | None = None  # the previous block's key (checked on a hit, with tokens)
    tokens: tuple[int, ...] = ()


def block_key(parent: int | None, tokens: tuple[int, ...], extra: tuple[Hashable, ...] = ()) -> int:
    """The key of a full block: it depends on every token before it through `parent`."""
    return hash((parent, tokens, extra))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks, self.block_size = num_blocks, block_size
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._never_cached: deque[int] = deque(range(num_blocks))  # free, nothing worth keeping
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # free but findable, LRU first
        self._by_key: dict[int, int] = {}  # key → block id

    @property
    def num_free(self) -> int:
        """Blocks a new allocation may take (cached free ones are evicted when needed)."""
        return len(self._never_cached) + len(self._cached_free)

    @property
    def num_cached(self) -> int:
        """Blocks findable by key, referenced or not."""
        return len(self._by_key)

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # a request's life: admit → grow / commit as it is computed → release

    def admit(self, table: BlockTable, token_ids: Sequence[int], keep_free: int = 0) -> int | None:
        """Give a new request blocks for all its tokens, cached prefix blocks first; returns how
        many leading tokens are cached, or None (nothing taken) when fewer than `keep_free`
        blocks would be left."""
        hits = self._match_prefix(table, token_ids)
        fresh = self.blocks_for(len(token_ids)) - len(hits)
        reusable_hits = sum(1 for block_id, _ in hits if self._blocks[block_id].ref_count == 0)
        if fresh > self.num_free - reusable_hits - keep_free:
            return None
        for block_id, key in hits:
            self._reference(block_id)
            table.block_ids.append(block_id)
            table.keys.append(key)
        table.block_ids.extend(self._allocate() for _ in range(fresh))
        return len(hits) * self.block_size

    def grow(self, table: BlockTable, num_tokens: int) -> bool:
        """Make the table hold positions 0..num_tokens-1; False (nothing taken) if blocks are short."""
        missing = self.blocks_for(num_tokens) - len(table.block_ids)
        if missing > self.num_free:
            return False
        table.block_ids.extend(self._allocate() for _ in range(missing))
        return True

    def commit(self, table: BlockTable, token_ids: Sequence[int], num_computed: int) -> None:
        """Make the blocks that the first `num_computed` tokens filled findable by key."""
        size = self.block_size
        for index in range(len(table.keys), num_computed // size):
            tokens = tuple(token_ids[index * size : (index + 1) * size])
            parent = table.keys[-1] if table.keys else None
            key = block_key(parent, tokens, self._extra(table, index))
            table.keys.append(key)
            if key in self._by_key:
                continue  # another request computed the same block first: ours stays private
            block = self._blocks[table.block_ids[index]]
            block.key, block.parent, block.tokens = key, parent, tokens
            self._by_key[key] = table.block_ids[index]

    def release(self, table: BlockTable) -> None:
        """Drop the request's references, last block first (evicted before its prefix)."""
        for block_id in reversed(table.block_ids):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.key is None:
                    self._never_cached.append(block_id)
                else:
                    self._cached_free[block_id] = None
        table.block_ids.clear()
        table.keys.clear()

    # internals

    def _match_prefix(self, table: BlockTable, token_ids: Sequence[int]) -> list[tuple[int, int]]:
        """(block id, key) of the cached blocks that hold the prompt's leading full blocks,
        leaving at least the last token to compute."""
        size, hits, parent = self.block_size, [], None
        for index in range((len(token_ids) - 1) // size):
            tokens = tuple(token_ids[index * size : (index + 1) * size])
            key = block_key(parent, tokens, self._extra(table, index))
            block_id = self._by_key.get(key)
            if block_id is None:
                break
            block = self._blocks[block_id]
            if block.tokens != tokens or block.parent != parent:  # a hash collision
                break
            hits.append((block_id, key))
            parent = key
        return hits

    def _extra(self, table: BlockTable, index: int) -> tuple[Hashable, ...]:
        """The content hashes of the media that block `index` covers a part of."""
        start, end = index * self.block_size, (index + 1) * self.block_size
        return tuple(span.content_hash for span in table.media_spans if span.start < end and span.end > start)

    def _reference(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._cached_free[block_id]
        block.ref_count += 1

    def _allocate(self) -> int:
        if self._never_cached:
            block_id = self._never_cached.popleft()
        else:
            block_id, _ = self._cached_free.popitem(last=False)  # evict the least recently released
            block = self._blocks[block_id]
            del self._by_key[block.key]
            block.key, block.parent, block.tokens = None, None, ()
        self._blocks[block_id].ref_count = 1
        return block_id
