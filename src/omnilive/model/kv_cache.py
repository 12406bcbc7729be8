"""Preallocated key/value caches, and the helper through which the model writes and reads them.

`KVCache` (slot cache): k and v are [layers, slots, kv_heads, max_len, head_dim], one
fixed-length row ("slot") per running request. The model writes a token's key and value at
(slot, position) and reads a row's keys 0..L-1, so a slot needs no bookkeeping beyond who
owns it: a freed slot is simply overwritten by its next owner. The talker and the native
Omni runner use it.

`PagedKVCache`: k and v are [layers, num_blocks, kv_heads, block_size, head_dim], and each
row (one running request) has a block table naming the blocks that hold its positions
0, block_size, 2 * block_size, ... Rows may share blocks (a common prompt prefix), which the
engine's BlockManager decides; the cache only stores tensors and tables.

Both hand the model a writer for one step (`cache.writer(rows, positions)`), so the model
does not know which layout it runs on.
"""

from __future__ import annotations

import torch

from omnilive.model.layers import CacheWrite, PagedCacheWrite


class CacheFullError(RuntimeError):
    """Every slot (row) is taken: the scheduler must wait for a request to finish."""


class _RowPool:
    """Hands out row ids 0..n-1, lowest first."""

    def __init__(self, size: int):
        self.size = size
        self._free = list(range(size - 1, -1, -1))  # pop() hands out row 0 first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise CacheFullError(f"all {self.size} KV cache slots are in use")
        return self._free.pop()

    def free(self, row: int) -> None:
        if not 0 <= row < self.size or row in self._free:
            raise ValueError(f"slot {row} is not allocated")
        self._free.append(row)


class KVCache:
    def __init__(
        self,
        num_layers: int,
        max_slots: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (num_layers, max_slots, num_kv_heads, max_len, head_dim)
        # zeros, not empty: a row batched with longer ones reads past its end (masked out), which must be finite
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_slots, self.max_len = max_slots, max_len
        self._slots = _RowPool(max_slots)

    @property
    def num_free(self) -> int:
        return self._slots.num_free

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def allocate(self) -> int:
        return self._slots.allocate()

    def free(self, slot: int) -> None:
        self._slots.free(slot)

    def writer(self, slots: torch.Tensor, positions: torch.Tensor) -> CacheWrite:
        """The store/read helper of one model step: slots [B], positions [B, T] (-1 = padding)."""
        return CacheWrite(slots, positions)


class PagedKVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        num_kv_heads: int,
        block_size: int,
        head_dim: int,
        max_rows: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (num_layers, num_blocks, num_kv_heads, block_size, head_dim)
        # zeros, not empty: reads past a row's end (masked out) must still be finite
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks, self.block_size, self.num_kv_heads = num_blocks, block_size, num_kv_heads
        self.max_len = max_len
        self.max_blocks_per_row = -(-max_len // block_size)
        # Unused entries name block 0: a read past a row's end gathers finite, masked-out keys.
        self.block_tables = torch.zeros((max_rows, self.max_blocks_per_row), dtype=torch.long, device=device)
        self._rows = _RowPool(max_rows)

    @property
    def max_rows(self) -> int:
        return self._rows.size

    @property
    def num_free_rows(self) -> int:
        return self._rows.num_free

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def allocate_row(self) -> int:
        return self._rows.allocate()

    def free_row(self, row: int) -> None:
        self._rows.free(row)

    def set_blocks(self, row: int, start: int, block_ids: list[int]) -> None:
        """Name the blocks that hold the row's block-table entries start, start + 1, ..."""
        if not block_ids:
            return
        if start + len(block_ids) > self.max_blocks_per_row:
            raise ValueError(f"row {row} would hold more than {self.max_len} positions")
        ids = torch.tensor(block_ids, dtype=torch.long)
        self.block_tables[row, start : start + len(block_ids)] = ids.to(self.block_tables.device)

    def writer(self, rows: torch.Tensor, positions: torch.Tensor) -> PagedCacheWrite:
        """The store/read helper of one model step: rows [B] (block-table rows), positions [B, T]."""
        return PagedCacheWrite(self.block_tables, self.block_size, self.num_kv_heads, rows, positions)


class FrameKVCache:
    """The cache of short sequences whose rows all start together and step in lockstep: the
    Qwen3-Omni code predictor writes each frame as a fresh 2..G-token sequence, every row at the
    same position each step. k and v are [layers, max_rows, kv_heads, max_len, head_dim]; batch
    row b lives in row b, whatever slot the caller names (nothing outlives a frame), so a step
    writes one slice and reads a view: no index gathers, no per-row masks."""

    def __init__(
        self,
        num_layers: int,
        max_rows: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (num_layers, max_rows, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_rows, self.max_len = max_rows, max_len
        self._masks: dict[tuple[int, int], torch.Tensor] = {}  # (start, tokens) → [1, 1, T, L]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def writer(self, rows: torch.Tensor, positions: torch.Tensor) -> FrameWrite:
        """positions [B, T]: the same run start..start + T - 1 in every row (`rows` is not read)."""
        B, T = positions.shape
        start = int(positions[0, 0])
        if B > self.max_rows or start + T > self.max_len:
            raise ValueError(f"{B} rows to position {start + T} do not fit a frame cache of {self.max_rows} rows "
                             f"x {self.max_len} positions")
        mask = self._masks.get((start, T))
        if mask is None:  # a query at position p sees keys 0..p
            keys = torch.arange(start + T, device=positions.device)
            queries = torch.arange(start, start + T, device=positions.device)
            mask = self._masks[start, T] = (keys <= queries[:, None])[None, None]
        return FrameWrite(B, start, T, mask.expand(B, 1, T, start + T))


class FrameWrite:
    """A FrameKVCache step: B rows of T tokens at positions start..start + T - 1 (the interface
    of layers.StepWrite that Attention reads)."""

    pack_index = None  # no padding

    def __init__(self, rows: int, start: int, tokens: int, mask: torch.Tensor):
        self.rows, self.start, self.tokens = rows, start, tokens
        self.groups = [FrameGroup((rows, tokens), start + tokens, mask)]

    def store(self, cache: torch.Tensor, tokens: torch.Tensor) -> None:
        """tokens [B * T, nkv, D] (row-major) → cache[b, :, start + t]."""
        B, T = self.rows, self.tokens
        cache[:B, :, self.start:self.start + T] = tokens.view(B, T, *tokens.shape[1:]).transpose(1, 2)

    def read(self, cache: torch.Tensor, group: FrameGroup) -> torch.Tensor:
        """Keys (or values) 0..L-1 of every row, a view: [B, nkv, L, D]."""
        return cache[:self.rows, :, :group.key_len]


class FrameGroup:
    """The one attention group of a FrameWrite (layers.AttentionGroup's fields)."""

    token_index = None

    def __init__(self, shape: tuple[int, int], key_len: int, mask: torch.Tensor):
        self.shape, self.key_len, self.mask = shape, key_len, mask
