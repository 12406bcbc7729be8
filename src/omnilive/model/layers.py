"""Building blocks of a decoder-only transformer: RMSNorm, rotary embedding, GQA attention
over an external KV cache, and the SwiGLU MLP.

Shapes: B = rows (requests), T = tokens per row this step, H = hidden size,
nh / nkv = query / key-value heads, D = head dim, L = key length read from the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.packed import can_pack, pack_weight, packed_linear


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (as the reference does), then scale in the model's dtype.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """Standard (NEOX-style, half-rotation) rotary position embedding, optionally multimodal.

    `forward` turns positions into (cos, sin) once per model step; every layer then calls
    `apply_rotary`. With `mrope_section` (Qwen2-VL / Qwen2.5-Omni M-RoPE) positions may be
    [3, B, T] (temporal, height, width): the D/2 frequencies are cut into three consecutive
    sections and section i takes its angles from axis i. Plain [B, T] positions mean all three
    axes are equal, which is ordinary RoPE.
    """

    def __init__(self, head_dim: int, theta: float, mrope_section: tuple[int, ...] | None = None):
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        # A plain CPU attribute, not a buffer: it must stay float32 when the model is cast to
        # bf16, hold real values when the model is built on the meta device, and it is not
        # part of any checkpoint.
        self.inv_freq = 1.0 / (theta ** exponents)  # [D/2]
        if mrope_section is not None and sum(mrope_section) != head_dim // 2:
            raise ValueError(f"mrope_section {mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
        self.mrope_section = tuple(mrope_section) if mrope_section is not None else None

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [B, T] (or [3, B, T] with M-RoPE) → angles [B, T, D]
        (the D/2 frequencies, repeated for both halves)."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, D/2] or [3, B, T, D/2]
        if positions.ndim == 3:
            if self.mrope_section is None:
                raise ValueError("[3, B, T] positions need a model configured with mrope_section")
            sections = freqs.split(self.mrope_section, dim=-1)
            freqs = torch.cat([section[axis % 3] for axis, section in enumerate(sections)], dim=-1)
        return torch.cat((freqs, freqs), dim=-1)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = self.angles(positions)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, D]; cos/sin [B, T, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads that reads and writes a KV cache.

    New keys/values of the valid tokens (position >= 0) are stored at their (row, position)
    first; then every query reads the keys 0..L-1 of its row, and `mask` keeps only those at
    positions <= its own. `write` knows the cache layout: a slot cache's layer tensors are
    [slots, nkv, max_len, D] (CacheWrite), a paged cache's [num_blocks, nkv, block_size, D]
    (PagedCacheWrite).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        qkv_bias: bool,
        output_bias: bool = False,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=output_bias)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, H]
        cos: torch.Tensor,  # [B, T, D]
        sin: torch.Tensor,
        k_cache: torch.Tensor,  # one layer of the cache (layout: see `write`)
        v_cache: torch.Tensor,
        write: CacheWrite | PagedCacheWrite,
        mask: torch.Tensor,  # [B, 1, T, L] bool, True = attend
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        write.store(k_cache, k)
        write.store(v_cache, v)
        keys, values = write.read(k_cache), write.read(v_cache)  # [B, nkv, L, D]

        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, enable_gqa=self.num_heads != self.num_kv_heads
        )  # [B, nh, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class CacheWrite:
    """Where one model step's tokens go in a slot cache, worked out once for all layers.

    Layer tensors are [slots, nkv, max_len, D]; slots = the cache slots of the batch rows [B];
    positions [B, T] with -1 for right padding.
    """

    def __init__(self, slots: torch.Tensor, positions: torch.Tensor):
        self.slots = slots
        self.key_len = int(positions.max()) + 1
        B, T = positions.shape
        valid = positions >= 0
        self.all_valid = bool(valid.all())
        if self.all_valid:
            self.rows = slots[:, None].expand(B, T).reshape(-1)
            self.positions = positions.reshape(-1)
            self.valid = None
        else:
            self.rows = slots[:, None].expand(B, T)[valid]
            self.positions = positions[valid]
            self.valid = valid
        # A single row reads its slot as a view; several rows gather (a small copy).
        self.single_slot = int(slots[0]) if B == 1 else None

    def store(self, cache: torch.Tensor, new: torch.Tensor) -> None:
        """new [B, nkv, T, D] → cache[slot, :, position] for every valid token."""
        tokens = new.transpose(1, 2)  # [B, T, nkv, D]
        tokens = tokens.reshape(-1, *tokens.shape[2:]) if self.all_valid else tokens[self.valid]
        cache[self.rows, :, self.positions] = tokens.to(cache.dtype)

    def read(self, cache: torch.Tensor) -> torch.Tensor:
        if self.single_slot is not None:
            return cache[self.single_slot, :, : self.key_len].unsqueeze(0)
        return cache[self.slots, :, : self.key_len]


class PagedCacheWrite:
    """Where one model step's tokens go in a paged cache, worked out once for all layers.

    Layer tensors are [num_blocks, nkv, block_size, D]; a row's position p lives in block
    block_tables[row, p // block_size] at offset p % block_size. Every layer reads through
    the same flat index: row i's keys 0..L-1 of head h are flat entries
    (block * nkv + h) * block_size + offset of the layer viewed as [num_blocks * nkv * block_size, D],
    so a read is one index_select straight into the [B, nkv, L, D] that attention takes.
    """

    def __init__(
        self,
        block_tables: torch.Tensor,  # [rows, max_blocks] long: block ids of each row
        block_size: int,
        num_kv_heads: int,
        rows: torch.Tensor,  # [B] long: the block-table row of each batch row
        positions: torch.Tensor,  # [B, T] long, -1 = right padding
    ):
        self.key_len = int(positions.max()) + 1
        B = positions.shape[0]
        device = positions.device
        tables = block_tables[rows]  # [B, max_blocks]
        heads = torch.arange(num_kv_heads, device=device) * block_size  # [nkv]
        keys = torch.arange(self.key_len, device=device)  # [L]
        key_start = tables[:, keys // block_size] * (num_kv_heads * block_size) + keys % block_size  # [B, L]
        self.read_index = (key_start[:, None, :] + heads[None, :, None]).reshape(-1)  # [B * nkv * L]
        self.read_shape = (B, num_kv_heads, self.key_len)
        valid = positions >= 0
        self.valid = None if bool(valid.all()) else valid
        token_rows = torch.arange(B, device=device)[:, None].expand_as(positions)
        if self.valid is not None:
            token_rows, positions = token_rows[valid], positions[valid]
        token_rows, token_positions = token_rows.reshape(-1), positions.reshape(-1)
        token_start = (
            tables[token_rows, token_positions // block_size] * (num_kv_heads * block_size)
            + token_positions % block_size
        )  # [N]
        self.write_index = (token_start[:, None] + heads[None, :]).reshape(-1)  # [N * nkv]

    def store(self, cache: torch.Tensor, new: torch.Tensor) -> None:
        """new [B, nkv, T, D] → the cache entries of every valid token's (row, position)."""
        tokens = new.transpose(1, 2)  # [B, T, nkv, D]
        tokens = (tokens if self.valid is None else tokens[self.valid]).reshape(-1, tokens.shape[-1])  # [N * nkv, D]
        cache.view(-1, cache.shape[-1]).index_copy_(0, self.write_index, tokens.to(cache.dtype))

    def read(self, cache: torch.Tensor) -> torch.Tensor:
        flat = cache.view(-1, cache.shape[-1])
        return flat.index_select(0, self.read_index).view(*self.read_shape, cache.shape[-1])


def causal_mask(positions: torch.Tensor, key_len: int) -> torch.Tensor:
    """[B, 1, T, L] bool: a query at position p sees keys at positions 0..p of its row.

    Padding queries (p = -1) see key 0 only, so their (ignored) outputs stay finite.
    """
    keys = torch.arange(key_len, device=positions.device)
    return (keys <= positions.clamp(min=0)[..., None]).unsqueeze(1)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Int8Linear(nn.Module):
    """Weight-only int8 linear (one scale per output row) for memory-bound CPU decode.

    A decode step reads every weight once, so halving the bytes of a bf16 model nearly halves
    its time. But torch's int8 kernel costs in proportion to its rows (it does not reuse a
    weight across rows): 1-4 rows run about twice as fast as a bf16 matmul, 8 rows 1.6x slower
    (Xeon with AMX, measured). Batches above `max_rows_for_int8_kernel` (batched decode,
    prefill) therefore run a bf16 matmul on the same int8 values held in bf16 - exact, as
    |q| <= 127 fits bf16's mantissa - so a reply does not depend on how many requests share
    its batch beyond rounding. That copy costs the bf16 weights' memory once more; where
    oneDNN runs bf16 natively it is kept packed (model/packed.py). Packed bf16 already beats
    the int8 kernel at 3-4 rows, but up to 4 rows (the default max_batch) every decode step
    runs the same kernel, so a reply is the same alone or batched, bf16 ties apart.
    """

    max_rows_for_int8_kernel = 4

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
        as_float = self.weight_int8.to(linear.weight.dtype)
        self.packed = can_pack(as_float.dtype, as_float.device)  # oneDNN's layout streams faster
        self.register_buffer("weight_int8_as_float", pack_weight(as_float) if self.packed else as_float,
                             persistent=False)
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.max_rows_for_int8_kernel:
            y = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale)
        elif self.packed:
            y = packed_linear(rows.to(torch.bfloat16), self.weight_int8_as_float) * self.scale
        else:
            y = F.linear(rows, self.weight_int8_as_float.to(x.dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


def quantize_linears_int8(module: nn.Module) -> nn.Module:
    """Replace every nn.Linear inside `module` by an Int8Linear, in place (bf16/fp16 models:
    torch's int8 kernel is slower than a float32 matmul)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            if child.weight.dtype == torch.float32:
                raise ValueError("int8 weights need a bf16 or fp16 model: with float32 they run slower")
            setattr(module, name, Int8Linear(child))
        else:
            quantize_linears_int8(child)
    return module
