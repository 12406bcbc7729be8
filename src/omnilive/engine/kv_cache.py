"""A preallocated key/value cache: one fixed-length row ("slot") per running request.

k and v are [layers, slots, kv_heads, max_len, head_dim]. The model writes a token's key and
value at (slot, position) and reads a row's keys 0..L-1, so a slot needs no bookkeeping
beyond who owns it: a freed slot is simply overwritten by its next owner.
"""

from __future__ import annotations

import torch


class CacheFullError(RuntimeError):
    """Every slot is taken: the scheduler must wait for a request to finish."""


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
        # zeros, not empty: a padding query reads key 0 of its row, which must be finite
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_slots, self.max_len = max_slots, max_len
        self._free = list(range(max_slots - 1, -1, -1))  # pop() hands out slot 0 first

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def allocate(self) -> int:
        if not self._free:
            raise CacheFullError(f"all {self.max_slots} KV cache slots are in use")
        return self._free.pop()

    def free(self, slot: int) -> None:
        if not 0 <= slot < self.max_slots or slot in self._free:
            raise ValueError(f"slot {slot} is not allocated")
        self._free.append(slot)
